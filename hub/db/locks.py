"""Transaction-scoped locks on a name, for "find, else create" of shared identities.

Two concurrent orders for the same new patient (or practitioner, or partner Organization) must
not create two resources. On PostgreSQL, where several writers run at once, the creator takes an
advisory lock on the identity and looks again before creating; the lock ends with the
transaction. SQLite has one writer at a time (BEGIN IMMEDIATE), so nothing is needed.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.orm import Session

_LOCK = text("SELECT pg_advisory_xact_lock(:k)")


def lock_identity(session: Session, key: str) -> None:
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        return
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
    conn.execute(_LOCK, {"k": digest})
