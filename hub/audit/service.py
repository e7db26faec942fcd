"""Verify the chain and take checkpoints (what `cgt-hub audit verify|checkpoint` run)."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from hub.audit.chain import Checkpoint, CheckpointInvalid, VerifyResult, verify_rows
from hub.audit.parallel import default_workers, verify_intact
from hub.audit.repository import AuditRepository, one_snapshot, stream_rows
from hub.db.uow import Store


def verify_chain(store: Store, checkpoint: Checkpoint | None = None, *, workers: int | None = None) -> VerifyResult:
    """Recompute the whole chain. A long intact chain is confirmed on every core
    (``hub.audit.parallel``); otherwise, or at the first doubt, one sequential pass names the first
    broken entry. ``workers``: how many processes (default: by the chain's length and the CPUs)."""
    head, outside = _head_and_strays(store)
    count = workers if workers is not None else default_workers(head[0])
    if count > 1 and outside == 0:
        kind, dsn = _driver_target(store)
        intact = verify_intact(kind, dsn, head, checkpoint, count)
        if intact is not None:
            return intact
    with stream_rows(store.read_engine) as (rows, head_row):
        return verify_rows(rows, head_row=head_row, checkpoint=checkpoint)


def _head_and_strays(store: Store) -> tuple[tuple[int, str], int]:
    """The head, and how many entries lie outside ``1..head.seq`` (read in one snapshot)."""
    with store.read_engine.connect() as conn:
        one_snapshot(conn)
        seq, digest = conn.exec_driver_sql("SELECT seq, hash FROM audit_head WHERE id = 1").one()
        outside = conn.execute(
            text("SELECT count(*) FROM audit_entry WHERE seq > :h OR seq < 1"), {"h": int(seq)}
        ).scalar_one()
        conn.rollback()
    return (int(seq), str(digest)), int(outside)


def _driver_target(store: Store) -> tuple[str, str]:
    """What a worker process needs to open its own connection to the same database."""
    url = make_url(store.database_url)
    if store.dialect == "sqlite":
        return "sqlite", str(Path(url.database or "").resolve())
    return "postgresql", url.set(drivername="postgresql").render_as_string(hide_password=False)


def take_checkpoint(store: Store) -> Checkpoint:
    return store.read(lambda s: AuditRepository.from_session(s).head())


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by `cgt-hub audit checkpoint`; :class:`CheckpointInvalid` (saying
    what is wrong) for a file that is missing, unreadable or not such a checkpoint. Values are
    taken as written, never converted: a size of 4.9 or "5" is refused, not rounded."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointInvalid(f"cannot read it ({exc.strerror or type(exc).__name__})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointInvalid("it is not JSON (expected what `cgt-hub audit checkpoint` prints)") from None
    if not isinstance(data, dict) or "size" not in data or "head" not in data:
        raise CheckpointInvalid('it is not a checkpoint (expected a JSON object with "size" and "head")')
    return Checkpoint(size=data["size"], head=data["head"])
