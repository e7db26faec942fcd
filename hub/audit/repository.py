"""All audit-table queries."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy.orm import Session

from hub.audit.chain import FIELDS, Checkpoint, Row, entry_hash
from hub.db.bulk import insert_rows
from hub.db.models import AuditEntry, AuditHead, table_of

_HEAD_FOR_UPDATE = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1).with_for_update()
_SET_HEAD = (
    table_of(AuditHead).update().where(table_of(AuditHead).c.id == 1).values(seq=bindparam("s"), hash=bindparam("h"))
)


@dataclass(frozen=True)
class PendingAudit:
    at: str
    actor: str
    action: str
    entity_type: str
    entity_id: str
    reason: str
    old_value: str
    new_value: str


class AuditRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    @classmethod
    def from_session(cls, session: Session) -> AuditRepository:
        return cls(session)

    def append(self, pending: Sequence[PendingAudit]) -> int:
        """Chain and insert entries. Locks the head row until the transaction ends, which
        serialises writers on PostgreSQL (SQLite's BEGIN IMMEDIATE already does)."""
        if not pending:
            return 0
        head = self.session.execute(_HEAD_FOR_UPDATE).one()
        seq, prev = int(head.seq), head.hash
        rows: list[dict[str, Any]] = []
        for p in pending:
            seq += 1
            h = entry_hash(
                prev,
                seq,
                p.at,
                p.actor,
                p.action,
                p.entity_type,
                p.entity_id,
                p.reason,
                p.old_value,
                p.new_value,
            )
            rows.append(
                {
                    "seq": seq,
                    "at": p.at,
                    "actor": p.actor,
                    "action": p.action,
                    "entity_type": p.entity_type,
                    "entity_id": p.entity_id,
                    "reason": p.reason,
                    "old_value": p.old_value,
                    "new_value": p.new_value,
                    "prev_hash": prev,
                    "hash": h,
                }
            )
            prev = h
        insert_rows(self.session, table_of(AuditEntry), rows)
        self.session.execute(_SET_HEAD, {"s": seq, "h": prev})
        return seq

    def head(self) -> Checkpoint:
        row = self.session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
        return Checkpoint(int(row.seq), row.hash)

    def entries_for(self, entity_type: str, entity_id: str) -> list[AuditEntry]:
        return list(
            self.session.scalars(
                select(AuditEntry)
                .where(AuditEntry.entity_type == entity_type, AuditEntry.entity_id == entity_id)
                .order_by(AuditEntry.seq)
            )
        )


@contextmanager
def stream_rows(engine: Engine, batch: int = 20000) -> Iterator[tuple[Iterator[Row], tuple[int, str]]]:
    """Stream every entry in seq order straight from the driver (no ORM objects), plus the head.

    The head and the entries are read in one snapshot (:func:`one_snapshot`); on PostgreSQL a
    server-side cursor keeps memory flat however long the chain is.
    """
    cols = ", ".join(FIELDS)
    with engine.connect() as conn:
        one_snapshot(conn)
        head = conn.exec_driver_sql("SELECT seq, hash FROM audit_head WHERE id = 1").one()
        head_row = (int(head[0]), str(head[1]))
        raw = conn.connection.dbapi_connection
        assert raw is not None
        if engine.dialect.name == "postgresql":
            cur = raw.cursor(name="audit_verify")  # server-side cursor
            cur.itersize = batch  # type: ignore[attr-defined]
        else:
            cur = raw.cursor()
        cur.execute(f"SELECT {cols} FROM audit_entry ORDER BY seq")

        def rows() -> Iterator[Row]:
            fetch = cur.fetchmany
            while True:
                chunk = fetch(batch)
                if not chunk:
                    return
                yield from chunk

        try:
            yield rows(), head_row
        finally:
            cur.close()
            conn.rollback()


def one_snapshot(conn: Connection) -> None:
    """Make every statement of ``conn``'s transaction read one snapshot of the database.

    Verification reads the head and then the entries. Under PostgreSQL's READ COMMITTED each
    statement sees the commits made before it started, so an entry the running hub commits in
    between showed up as an entry "beyond the recorded head": tampering reported where there was
    none. REPEATABLE READ takes the snapshot at the first query and keeps it for the transaction
    (read only: verifying never writes). A SQLite read transaction already reads one snapshot."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
