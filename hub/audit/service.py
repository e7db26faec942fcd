"""Verify the chain and take checkpoints (what `cgt-hub audit verify|checkpoint` run)."""

from __future__ import annotations

import json
from pathlib import Path

from hub.audit.chain import Checkpoint, VerifyResult, verify_rows
from hub.audit.repository import AuditRepository, stream_rows
from hub.db.uow import Store


def verify_chain(store: Store, checkpoint: Checkpoint | None = None) -> VerifyResult:
    with stream_rows(store.read_engine) as (rows, head):
        return verify_rows(rows, head_row=head, checkpoint=checkpoint)


def take_checkpoint(store: Store) -> Checkpoint:
    return store.read(lambda s: AuditRepository.from_session(s).head())


def load_checkpoint(path: Path) -> Checkpoint:
    data = json.loads(path.read_text(encoding="utf-8"))
    return Checkpoint(size=int(data["size"]), head=str(data["head"]))
