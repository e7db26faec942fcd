"""`cgt-hub messages list|show|replay|quarantine`, run as an operator would (a subprocess on the
hub's database), after real traffic through the listener."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, update

from adapters.hl7v2.listener import MllpListener
from hub.db.models import AuditEntry, InboxMessage
from hub.db.uow import open_store
from hub.partners.loader import PartnerDirectory
from tests.adapters.hl7v2 import messages as m
from tests.adapters.hl7v2.conftest import Loop, Sender, make_ctx
from tests.conftest import REPO

CLI = Path(sys.executable).parent / "cgt-hub"


def cli(args: list[str], url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_")}
    env.update(CGTHUB_DATABASE_URL=url, CGTHUB_PROFILES_DIR=str(REPO / "partner-profiles"), USER="ops.tester")
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_list_show_replay_quarantine(db_url: str, partners: PartnerDirectory, loop: Loop) -> None:
    store = open_store(db_url)
    listener = MllpListener(make_ctx(store, partners), host="127.0.0.1", port=0)
    loop.run(listener.start())
    sender = Sender(listener.port)
    try:
        sender.send(m.siu("S12", "APT-CLI", "PL-LATER", "MRN-CLI"), expect=2)  # no such order yet: AE
        sender.send(m.adt("MRN-CLI2", family="Secretname"))
        sender.send(m.orm("PL-LATER", "MRN-CLI"))
    finally:
        sender.close()
        loop.run(listener.stop())
    rows = store.read(lambda s: list(s.scalars(select(InboxMessage).order_by(InboxMessage.received_at))))
    siu, adt = rows[0], rows[1]
    assert siu.status == "rejected"

    listed = cli(["messages", "list", "--direction", "in"], db_url)
    assert listed.returncode == 0, listed.stderr
    assert siu.id in listed.stdout
    assert "SIU^S12" in listed.stdout
    assert "Secretname" not in listed.stdout

    shown = cli(["messages", "show", adt.id], db_url)
    assert shown.returncode == 0, shown.stderr
    assert "Secretname" not in shown.stdout
    assert "MRN-CLI2" not in shown.stdout
    assert "PID|1||***" in shown.stdout
    assert "MSA|CA|" in shown.stdout
    clear = cli(["messages", "show", adt.id, "--unmasked"], db_url)
    assert "Secretname" in clear.stdout
    audited = store.read(
        lambda s: s.scalars(select(AuditEntry).where(AuditEntry.action == "read", AuditEntry.entity_id == adt.id)).one()
    )
    assert audited.actor == "ops.tester"

    replayed = cli(["messages", "replay", siu.id], db_url)
    assert replayed.returncode == 0, replayed.stderr
    assert "handled" in replayed.stdout
    row = store.read(lambda s: s.get(InboxMessage, siu.id))
    assert row is not None
    assert row.status == "handled"
    assert b"MSA|CA|" in (row.response or b"")
    again = cli(["messages", "replay", siu.id], db_url)
    assert again.returncode == 1
    assert "would repeat its effects" in again.stderr

    q = cli(["messages", "quarantine", adt.id, "--reason", "sent to the wrong hub"], db_url)
    assert q.returncode == 0, q.stderr
    assert store.read(lambda s: s.get(InboxMessage, adt.id)).status == "quarantined"  # type: ignore[union-attr]
    assert cli(["messages", "show", "no-such-id"], db_url).returncode == 1
    store.dispose()


@pytest.mark.parametrize(
    "args",
    [
        ["messages", "show", "x" * 200, "--unmasked"],
        ["messages", "show", "out:99999999999999999999", "--unmasked"],
        ["messages", "replay", "out:99999999999999999999"],
        ["messages", "quarantine", "out:99999999999999999999", "--reason", "r"],
    ],
)
def test_an_unknown_message_is_refused_not_a_traceback(db_url: str, args: list[str]) -> None:
    """Ids no message can have (too long for the audit trail, beyond BIGINT) are "not known", and an
    unmasked read of nothing is not audited as a read."""
    result = cli(args, db_url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "is not known" in result.stderr
    assert "Traceback" not in result.stderr
    store = open_store(db_url)
    try:
        assert store.read(lambda s: s.scalars(select(AuditEntry)).all()) == []
    finally:
        store.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_replaying_an_unreadable_message_says_why(db_url: str, partners: PartnerDirectory, loop: Loop) -> None:
    """A stored message of a known partner that cannot be parsed ended `messages replay` in a
    traceback. (The listener answers such bytes itself; here the stored raw bytes are made
    unreadable, as bytes kept from an earlier version of the parser could be.)"""
    store = open_store(db_url)
    listener = MllpListener(make_ctx(store, partners), host="127.0.0.1", port=0)
    loop.run(listener.start())
    sender = Sender(listener.port)
    try:
        sender.send(m.siu("S12", "APT-UNREAD", "PL-NONE", "MRN-UNREAD"), expect=2)  # no such order: rejected
    finally:
        sender.close()
        loop.run(listener.stop())
    (row,) = store.read(lambda s: list(s.scalars(select(InboxMessage))))
    assert row.status == "rejected"
    store.run(lambda w: w.session.execute(update(InboxMessage).values(raw=b"PID|1||X\r")))
    replayed = cli(["messages", "replay", row.id], db_url)
    assert replayed.returncode == 1
    assert "Traceback" not in replayed.stderr
    assert "not a readable HL7 v2 message" in replayed.stderr
    assert store.read(lambda s: s.get(InboxMessage, row.id)).status == "rejected"  # type: ignore[union-attr]
