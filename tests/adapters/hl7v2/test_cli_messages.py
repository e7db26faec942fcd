"""`cgt-hub messages list|show|replay|quarantine`, run as an operator would (a subprocess on the
hub's database), after real traffic through the listener."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from adapters.hl7v2.build import build
from adapters.hl7v2.listener import MllpListener
from adapters.hl7v2.tokenizer import parse
from hub import canonical
from hub.db.models import AuditEntry, InboxMessage
from hub.db.models_hl7v2 import Hl7v2Outbound
from hub.db.uow import Store, open_store
from hub.partners.loader import PartnerDirectory
from hub.runtime import build_runtime
from tests.adapters.hl7v2 import messages as m
from tests.adapters.hl7v2.conftest import Loop, Sender, make_ctx
from tests.builders import Driver
from tests.conftest import REPO

CLI = Path(sys.executable).parent / "cgt-hub"


def cli(args: list[str], url: str, profiles: Path = REPO / "partner-profiles") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_")}
    env.update(CGTHUB_DATABASE_URL=url, CGTHUB_PROFILES_DIR=str(profiles), USER="ops.tester")
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


def _owe_two_messages(store: Store, partners: PartnerDirectory, loop: Loop) -> list[Hl7v2Outbound]:
    """Two ORU^R01 owed to St Mary's for one order, both dead (as after refusals)."""
    ctx = make_ctx(store, partners)
    driver = Driver.place(store, partners)
    driver.step()

    async def drain() -> None:
        runtime = build_runtime(ctx.settings, ctx=ctx)
        await runtime.start(run_relay=False)
        try:
            await runtime.relay.drain()
        finally:
            await runtime.stop()

    loop.run(drain())
    store.run(lambda w: w.session.execute(update(Hl7v2Outbound).values(status="dead", attempts=8)))
    return store.read(lambda s: list(s.scalars(select(Hl7v2Outbound).order_by(Hl7v2Outbound.id))))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_dead_message_of_a_partner_is_replayed_with_one_command_in_order(
    db_url: str, partners: PartnerDirectory, loop: Loop
) -> None:
    """After an outage the operator had to replay dead messages one `messages replay` at a time
    (it took one key), and a loop over `messages list` (newest first) would requeue them backwards
    while the serving hub was already sending. Now `--ids` prints them oldest first and one replay
    takes them all, requeued in the order they were owed."""
    store = open_store(db_url)
    try:
        rows = _owe_two_messages(store, partners, loop)
        assert [r.status for r in rows] == ["dead", "dead"]
        listed = cli(
            ["messages", "list", "--direction", "out", "--status", "dead", "--partner", "st-marys", "--ids"], db_url
        )
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split() == [f"out:{r.id}" for r in rows]
        replayed = cli(["messages", "replay", *reversed(listed.stdout.split())], db_url)
        assert replayed.returncode == 0, replayed.stderr
        assert [line.split(":")[1] for line in replayed.stdout.splitlines()] == [str(r.id) for r in rows]
        assert {r.status for r in store.read(lambda s: list(s.scalars(select(Hl7v2Outbound))))} == {"pending"}
        # one unknown key among them: the others are still replayed, the exit code says one was not
        store.run(lambda w: w.session.execute(update(Hl7v2Outbound).values(status="dead")))
        mixed = cli(["messages", "replay", f"out:{rows[0].id}", "out:999999"], db_url)
        assert mixed.returncode == 1
        assert "out:999999: not replayed" in mixed.stderr
        assert store.read(lambda s: s.get(Hl7v2Outbound, rows[0].id)).status == "pending"  # type: ignore[union-attr]
    finally:
        store.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_dead_message_is_rebuilt_with_the_fixed_profile_under_a_new_control_id(
    db_url: str, partners: PartnerDirectory, loop: Loop, tmp_path: Path
) -> None:
    """A hospital refused our messages because its profile named the wrong facility and message
    type. After the profile was fixed, `messages replay` could only resend the old bytes (built
    once, kept), so the fix never reached the dead messages. `--rebuild` builds them again from
    their snapshot under the current profile, with a new MSH-10 (the old one in the audit trail);
    without it the same bytes go again, as before."""
    store = open_store(db_url)
    try:
        rows = _owe_two_messages(store, partners, loop)
        first = rows[0]
        sent = build(canonical.loads(first.snapshot))  # what the hospital refused
        store.run(
            lambda w: w.session.execute(update(Hl7v2Outbound).where(Hl7v2Outbound.id == first.id).values(payload=sent))
        )
        fixed = tmp_path / "profiles"
        shutil.copytree(REPO / "partner-profiles", fixed)
        profile = fixed / "st-marys.yaml"
        text = profile.read_text(encoding="utf-8")
        profile.write_text(
            text.replace("hl7_facility: STMARYS", "hl7_facility: SMH-EHR").replace(
                "message: ORU^R01", "message: ORM^O01"
            ),
            encoding="utf-8",
        )
        key = f"out:{first.id}"

        plain = cli(["messages", "replay", key], db_url, fixed)  # the default is unchanged: the same bytes
        assert plain.returncode == 0, plain.stderr
        row = store.read(lambda s: s.get(Hl7v2Outbound, first.id))
        assert row is not None
        assert (row.payload, row.control_id, row.status) == (sent, first.control_id, "pending")
        store.run(lambda w: w.session.execute(update(Hl7v2Outbound).values(status="dead")))

        rebuilt = cli(["messages", "replay", key, "--rebuild"], db_url, fixed)
        assert rebuilt.returncode == 0, rebuilt.stderr
        row = store.read(lambda s: s.get(Hl7v2Outbound, first.id))
        assert row is not None
        assert row.status == "pending"
        assert row.attempts == 0
        assert row.control_id != first.control_id
        assert f"{key}: pending, rebuilt as ORM^O01 {row.control_id} (was {first.control_id};" in rebuilt.stdout
        assert row.payload is not None
        msg = parse(row.payload)
        assert msg.message_type == "ORM^O01"
        assert msg.control_id == row.control_id
        assert msg.segment("MSH")[6] == "SMH-EHR"  # type: ignore[index]
        assert row.message_type == "ORM^O01"
        # what happened is what the snapshot said: the same order, patient and status
        old_msg = parse(sent)
        assert msg.segment("PID")[3] == old_msg.segment("PID")[3]  # type: ignore[index]
        assert msg.segment("ORC")[3] == old_msg.segment("ORC")[3]  # type: ignore[index]
        entry = store.read(
            lambda s: s.scalars(
                select(AuditEntry).where(AuditEntry.entity_id == str(first.id)).order_by(AuditEntry.seq.desc())
            ).first()
        )
        assert entry is not None
        assert entry.actor == "ops.tester"
        assert json.loads(entry.old_value)["control_id"] == first.control_id
        assert json.loads(entry.new_value)["control_id"] == row.control_id
        assert first.control_id in entry.reason
        # the other dead one was not touched
        other = store.read(lambda s: s.get(Hl7v2Outbound, rows[1].id))
        assert other is not None
        assert (other.status, other.control_id) == ("dead", rows[1].control_id)

        again = cli(["messages", "replay", key, "--rebuild"], db_url, fixed)
        assert again.returncode == 1
        assert "only dead or quarantined ones are replayed" in again.stderr
        inbox = cli(["messages", "replay", "0190aaaa-0000-7000-8000-000000000000", "--rebuild"], db_url, fixed)
        assert inbox.returncode == 1
        assert "--rebuild is for outbound messages" in inbox.stderr
        assert "Traceback" not in again.stderr + inbox.stderr
    finally:
        store.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_list_filters_by_time_and_refuses_a_mistyped_filter(
    db_url: str, partners: PartnerDirectory, loop: Loop
) -> None:
    """`messages list` had no time filter (the operator at 3 a.m. wants "the last hour"), and a
    mistyped `--direction` answered "no messages" with exit 0, as if nothing had happened."""
    store = open_store(db_url)
    try:
        rows = _owe_two_messages(store, partners, loop)
        old = datetime.now(UTC) - timedelta(hours=3)
        store.run(
            lambda w: w.session.execute(
                update(Hl7v2Outbound).where(Hl7v2Outbound.id == rows[0].id).values(created_at=old)
            )
        )
        recent = cli(["messages", "list", "--direction", "out", "--since", "1h", "--ids"], db_url)
        assert recent.returncode == 0, recent.stderr
        assert recent.stdout.split() == [f"out:{rows[1].id}"]
        since = (old - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M")
        both = cli(["messages", "list", "--direction", "out", "--since", since, "--ids"], db_url)
        assert both.stdout.split() == [f"out:{r.id}" for r in rows]
        typo = cli(["messages", "list", "--direction", "outbound"], db_url)
        assert typo.returncode == 2
        assert "--direction must be one of" in typo.stderr
        bad_time = cli(["messages", "list", "--since", "yesterday"], db_url)
        assert bad_time.returncode == 2
        assert "--since" in bad_time.stderr
    finally:
        store.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_refused_fhir_request_can_be_found_and_shown(db_url: str) -> None:
    """A FHIR create the hub refused is kept in the inbox, but `messages list/show` only knew HL7 v2:
    the operator could not find it, nor see why it was refused."""
    store = open_store(db_url)
    raw = b'POST /fhir/ServiceRequest\r\n\r\n{"resourceType":"ServiceRequest","subject":{"display":"Secretname"}}'
    row = InboxMessage(
        id="01a23d60-0000-7000-8000-000000000001",
        partner="st-marys",
        channel="fhir-rest",
        external_id="key-1",
        content_hash="0" * 64,
        raw=raw,
        message_type="create ServiceRequest",
        received_at=datetime.now(UTC),
        status="rejected",
        response=json.dumps(
            {
                "status": 422,
                "headers": {},
                "body": json.dumps(
                    {
                        "resourceType": "OperationOutcome",
                        "issue": [
                            {
                                "severity": "error",
                                "code": "invalid",
                                "diagnostics": "birthDate 1971-03-09 of Secretname is wrong",
                                "expression": ["ServiceRequest.intent"],
                            }
                        ],
                    }
                ),
            }
        ).encode(),
        error="ServiceRequest does not conform to the therapy order profile: intent is required",
    )
    try:
        store.run(lambda w: w.session.add(row))
        hl7_only = cli(["messages", "list", "--direction", "in"], db_url)
        assert row.id not in hl7_only.stdout
        listed = cli(
            ["messages", "list", "--channel", "fhir-rest", "--status", "rejected", "--partner", "st-marys"], db_url
        )
        assert listed.returncode == 0, listed.stderr
        assert row.id in listed.stdout
        assert "therapy order profile" in listed.stdout
        shown = cli(["messages", "show", row.id], db_url)
        assert shown.returncode == 0, shown.stderr
        assert "error: ServiceRequest does not conform" in shown.stdout
        assert "answered: HTTP 422" in shown.stdout
        assert "error invalid at ServiceRequest.intent" in shown.stdout  # where, not the quoted values
        assert "1971" not in shown.stdout
        assert "Secretname" not in shown.stdout
        assert "Secretname" in cli(["messages", "show", row.id, "--unmasked"], db_url).stdout
        replayed = cli(["messages", "replay", row.id], db_url)
        assert replayed.returncode == 1
        assert "only HL7 v2 messages are replayed" in replayed.stderr
    finally:
        store.dispose()
