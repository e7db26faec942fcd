"""Named leases: one process at a time holds a role (the outbox relay, a partner's HL7 sender,
the subscription deliverer).

A lease is a row in ``lease``: its name, its holder and when it expires. A holder takes it, or
renews it, when the row is missing, already its own, or expired; the row is read ``FOR UPDATE`` so
two processes racing for an expired lease on PostgreSQL cannot both win (SQLite has one writer at a
time). A holder that stops gives its leases up, so a hub started next works at once instead of
waiting for them to expire; one that crashes loses them when they expire.

The relay, the HL7 sender and the subscription deliverer each had their own copy of these two
jobs; they are kept here once so the rule cannot drift between them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

from hub.db.models import Lease
from hub.db.uow import Work

NAME_MAX = 64


def holder_name(owner: object) -> str:
    """A holder name unique to this host, process and object."""
    return f"{socket.gethostname()}:{os.getpid()}:{id(owner)}"


def take(name: str, holder: str, span_s: float) -> Callable[[Work], bool]:
    """A job that takes or renews the lease ``name`` for ``span_s`` seconds; True if ``holder`` holds it."""
    if not name or len(name) > NAME_MAX:
        raise ValueError(f"a lease name is 1 to {NAME_MAX} characters")

    def job(work: Work) -> bool:
        row = work.session.execute(select(Lease).where(Lease.name == name).with_for_update()).scalar_one_or_none()
        expires = work.now + timedelta(seconds=span_s)
        if row is None:
            work.session.add(Lease(name=name, holder=holder, expires_at=expires))
            return True
        if row.holder == holder or row.expires_at < work.now:
            row.holder, row.expires_at = holder, expires
            return True
        return False

    return job


def release(holder: str, name: str | None = None) -> Callable[[Work], None]:
    """A job that gives up ``holder``'s lease ``name``, or all of its leases when no name is given."""

    def job(work: Work) -> None:
        query = select(Lease).where(Lease.holder == holder)
        if name is not None:
            query = query.where(Lease.name == name)
        for row in work.session.scalars(query.with_for_update()):
            work.session.delete(row)

    return job
