"""Outbound: order events → ORU^R01 (or the partner's message type) to a hospital's MLLP endpoint,
with the ACK awaited, retries with backoff, dead letters, replay, and every attempt recorded."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hl7apy.parser import parse_message
from sqlalchemy import select

from adapters.hl7v2 import ops
from adapters.hl7v2.ack import acked_control_id
from adapters.hl7v2.framer import Deframer, frame
from adapters.hl7v2.outbound import OutboundSender, SenderSettings
from adapters.hl7v2.tokenizer import parse
from hub.context import HubContext
from hub.db.models import Alert, AuditEntry
from hub.db.models_hl7v2 import Hl7v2Outbound, Hl7v2OutboundAttempt
from hub.db.models_logistics import AlertAcknowledgement
from hub.db.uow import Store
from hub.orders.schemas import PlaceHold
from hub.orders.service import OrderService
from hub.partners.loader import PartnerDirectory
from hub.runtime import build_runtime
from tests.adapters.hl7v2 import messages as m
from tests.adapters.hl7v2.conftest import Loop
from tests.builders import Driver, place_cmd
from tests.logistics_support import events
from tests.support.tls import make_pki


@dataclass
class Hospital:
    """A hospital's MLLP endpoint: records what arrives, answers as scripted (then AA)."""

    # AA | AE | AR | close | silent | AA+close | other (AA naming another MSA-2) | garbage
    script: list[str] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None
    tls: ssl.SSLContext | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        deframer = Deframer()
        try:
            while data := await reader.read(65536):
                for payload in deframer.feed(data):
                    self.received.append(payload)
                    action = self.script.pop(0) if self.script else "AA"
                    if action == "close":
                        writer.close()
                        return
                    if action == "silent":
                        continue
                    if action == "garbage":  # not MLLP: a web server or a raw ACK on the port
                        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                        continue
                    cid = parse(payload).control_id if action != "other" else "THEIR-OWN-ID"
                    action = "AA" if action == "other" else action
                    n = len(self.received)
                    header = f"MSH|^~\\&|EHR|STMARYS|CGTHUB|CGTHUB|20261125||ACK^R01^ACK|H{n}|P|2.5.1"
                    ack = f"{header}\rMSA|{action.removesuffix('+close')}|{cid}\r"
                    writer.write(frame(ack.encode()))
                    await writer.drain()
                    if action.endswith("+close"):  # engines that take one message per connection
                        writer.close()
                        return
        except ConnectionError:
            return


@pytest.fixture
def hospital(loop: Loop) -> Iterator[Hospital]:
    h = Hospital()
    loop.run(h.start())
    yield h
    loop.run(h.stop())


def _sender(ctx: HubContext, hospital: Hospital, **settings: float) -> OutboundSender:
    defaults = {"max_attempts": 3, "backoff_base_s": 0.05, "backoff_max_s": 0.2, "ack_timeout_s": 1.0, "poll_s": 0.05}
    defaults.update(settings)
    return OutboundSender(
        ctx.store,
        ctx.partners,
        SenderSettings(**defaults),  # type: ignore[arg-type]
        endpoint_overrides={"st-marys": f"mllp://127.0.0.1:{hospital.port}"},
    )


def _drain(ctx: HubContext, loop: Loop) -> None:
    async def go() -> None:
        runtime = build_runtime(ctx.settings, ctx=ctx)
        await runtime.start(run_relay=False)
        try:
            await runtime.relay.drain()
        finally:
            await runtime.stop()

    loop.run(go())


def _rows(store: Store) -> list[Hl7v2Outbound]:
    return store.read(lambda s: list(s.scalars(select(Hl7v2Outbound).order_by(Hl7v2Outbound.id))))


def _attempts(store: Store, outbound_id: int) -> list[Hl7v2OutboundAttempt]:
    return store.read(
        lambda s: list(
            s.scalars(
                select(Hl7v2OutboundAttempt)
                .where(Hl7v2OutboundAttempt.outbound_id == outbound_id)
                .order_by(Hl7v2OutboundAttempt.attempt)
            )
        )
    )


def test_status_and_release_results_reach_the_hospital(
    ctx: HubContext, store: Store, partners: PartnerDirectory, hospital: Hospital, loop: Loop
) -> None:
    driver = Driver.place(store, partners)
    driver.walk_to("released")
    _drain(ctx, loop)
    rows = _rows(store)
    # accepted + one per stage change up to released, each owed once to St Mary's (orderer, collector, treater)
    assert [r.event_type for r in rows][:2] == ["order.accepted", "order.stage_changed"]
    assert len(rows) == 1 + 7
    assert {r.partner for r in rows} == {"st-marys"}
    _drain(ctx, loop)  # redelivered events are not owed twice
    assert len(_rows(store)) == len(rows)
    sender = _sender(ctx, hospital)
    assert loop.run(sender.deliver_all(timeout_s=30)) == len(rows)
    loop.run(sender.close())
    assert [r.status for r in _rows(store)] == ["delivered"] * len(rows)
    assert [parse(p).control_id for p in hospital.received] == [r.control_id for r in rows]  # in order
    last = hospital.received[-1]
    msg = parse(last)
    assert msg.message_type == "ORU^R01"
    assert msg.segment("OBR")[25] == "F"  # type: ignore[index]
    obx = [s for s in msg.segments if s[0] == "OBX"]
    assert obx[0][5].startswith("released^")
    codes = {s[3].split("^")[0] for s in obx}
    assert {"viability", "car-expression", "vcn", "endotoxin", "sterility", "mycoplasma"} <= codes
    assert msg.segment("PID")[3].startswith(driver.mrn or "")  # type: ignore[index]
    parse_message(last.decode().replace("\n", "\r"), find_groups=True).validate()  # hl7apy: well-formed
    attempts = _attempts(store, rows[-1].id)
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "AA")]
    assert acked_control_id(attempts[0].ack or b"") == rows[-1].control_id


def test_retries_with_backoff_then_delivers_in_order(
    ctx: HubContext, store: Store, partners: PartnerDirectory, hospital: Hospital, loop: Loop
) -> None:
    store.run(lambda w: OrderService(w, partners).place(place_cmd()))
    _drain(ctx, loop)
    # the second attempt reuses the kept connection: closed unanswered there, it is sent once more
    # over a new connection (closed unanswered too: that attempt failed)
    hospital.script = ["AE", "close", "close", "AA"]
    sender = _sender(ctx, hospital, max_attempts=5)
    assert loop.run(sender.deliver_all(timeout_s=30)) == 1
    loop.run(sender.close())
    row = _rows(store)[0]
    assert row.status == "delivered"
    assert [a.outcome for a in _attempts(store, row.id)] == ["AE", "io-error", "AA"]
    assert len({p for p in hospital.received}) == 1  # the same bytes each time (same MSH-10)


def test_a_receiver_that_closes_its_connections_costs_no_attempt(
    ctx: HubContext, store: Store, partners: PartnerDirectory, hospital: Hospital, loop: Loop
) -> None:
    """Receivers end connections: after each ACK ("one message per connection" engines), on their
    idle timeout, when they restart. The next message went over the dead kept connection, failed
    (io-error, a warning) and waited for its backoff; every other message to such a hospital did."""
    view_ = store.run(lambda w: OrderService(w, partners).place(place_cmd()))
    driver = Driver(store, partners, view_)
    driver.step()
    driver.step()
    _drain(ctx, loop)
    hospital.script = ["AA+close", "AA+close", "AA", "close", "AA"]
    sender = _sender(ctx, hospital, backoff_base_s=5, backoff_max_s=5)
    assert loop.run(sender.deliver_all(timeout_s=4)) == 3
    # the third message went over a kept connection that the hospital then closed unanswered
    store.run(lambda w: OrderService(w, partners).hold(PlaceHold(order_id=view_.id, reason="QA review")))
    _drain(ctx, loop)
    assert loop.run(sender.deliver_all(timeout_s=4)) == 1
    loop.run(sender.close())
    rows = _rows(store)
    assert [r.status for r in rows] == ["delivered"] * 4
    assert [[a.outcome for a in _attempts(store, r.id)] for r in rows] == [["AA"]] * 4
    sent = [parse(p).control_id for p in hospital.received]
    assert sent == [r.control_id for r in rows[:3]] + [rows[3].control_id] * 2


def test_dead_after_n_attempts_then_replayed(
    ctx: HubContext, store: Store, partners: PartnerDirectory, hospital: Hospital, loop: Loop
) -> None:
    store.run(lambda w: OrderService(w, partners).place(place_cmd()))
    _drain(ctx, loop)
    hospital.script = ["AE", "silent", "AE"]
    sender = _sender(ctx, hospital, max_attempts=3, ack_timeout_s=0.3)
    assert loop.run(sender.deliver_all(timeout_s=30)) == 0
    row = _rows(store)[0]
    assert row.status == "dead"
    assert [a.outcome for a in _attempts(store, row.id)] == ["AE", "timeout", "AE"]
    _drain(ctx, loop)
    alerts = store.read(lambda s: list(s.scalars(select(Alert).where(Alert.kind == "hl7v2.outbound-dead"))))
    assert len(alerts) == 1
    assert "MRN" not in alerts[0].message
    assert "pending" in ops.replay(ctx, f"out:{row.id}")
    assert loop.run(sender.deliver_all(timeout_s=30)) == 1
    loop.run(sender.close())
    assert _rows(store)[0].status == "delivered"
    # the history reads in order across the replay (it restarted at #1: "#1 AE, #1 AA, #2 …")
    assert [(a.attempt, a.outcome) for a in _attempts(store, row.id)] == [
        (1, "AE"),
        (2, "timeout"),
        (3, "AE"),
        (4, "AA"),
    ]
    shown = ops.show(ctx, f"out:{row.id}")
    tries = [line.split()[:1] + line.split()[3:4] for line in shown.splitlines() if line.startswith("  #")]
    assert tries == [["#1", "AE"], ["#2", "timeout"], ["#3", "AE"], ["#4", "AA"]]


def test_an_answer_that_is_not_the_acknowledgment_is_named_in_the_attempt(
    ctx: HubContext, store: Store, partners: PartnerDirectory, hospital: Hospital, loop: Loop
) -> None:
    """A receiver that answers with its own control id in MSA-2, or with bytes that are not MLLP,
    is not taken as a success; the attempts only said "no acknowledgment within 0s", as if the
    hospital were silent, and the operator had nothing to tell its integration team."""
    store.run(lambda w: OrderService(w, partners).place(place_cmd()))
    _drain(ctx, loop)
    hospital.script = ["other", "garbage"]
    sender = _sender(ctx, hospital, max_attempts=2, ack_timeout_s=0.5)
    assert loop.run(sender.deliver_all(timeout_s=30)) == 0
    loop.run(sender.close())
    row = _rows(store)[0]
    assert row.status == "dead"
    first, second = _attempts(store, row.id)
    assert (first.outcome, second.outcome) == ("timeout", "timeout")
    assert first.error is not None
    assert f"no acknowledgment of {row.control_id}" in first.error
    assert "1 frame(s) came back acknowledging other messages (MSA-2 'THEIR-OWN-ID')" in first.error
    assert second.error is not None
    assert "28 byte(s) came back outside MLLP frames" in second.error
    assert "HTTP" not in second.error  # counts, never content


def test_a_replay_send_next_to_a_serving_hub_leaves_the_partner_to_it(
    ctx: HubContext, store: Store, partners: PartnerDirectory, hospital: Hospital, loop: Loop
) -> None:
    """``messages replay --send`` delivered without the partner's sending lease: next to a serving
    hub, two processes could send the same message at once. It now leaves a leased partner alone."""
    store.run(lambda w: OrderService(w, partners).place(place_cmd()))
    _drain(ctx, loop)
    serving, operator = _sender(ctx, hospital), _sender(ctx, hospital)
    assert loop.run(serving._lease("st-marys"))
    assert loop.run(operator.deliver_all(timeout_s=5)) == 0
    assert operator.busy == ["st-marys"]
    assert hospital.received == []
    loop.run(serving.release_leases())
    assert loop.run(operator.deliver_all(timeout_s=30)) == 1
    assert operator.busy == []
    loop.run(operator.close())
    assert len(hospital.received) == 1


def test_an_application_reject_is_retried_like_the_receiver_being_down(
    ctx: HubContext, store: Store, partners: PartnerDirectory, hospital: Hospital, loop: Loop
) -> None:
    """HL7 v2.5 §2.9.2.2: an original-mode AR is a message the receiver could not process "for
    reasons unrelated to its content or format (system down, internal error)" and will likely
    accept later. The hub dead-lettered it at once: an EHR down for a minute turned every status
    message into a dead letter for an operator to replay, and the next ones overtook it."""
    view_ = store.run(lambda w: OrderService(w, partners).place(place_cmd()))
    driver = Driver(store, partners, view_)
    driver.step()
    _drain(ctx, loop)
    hospital.script = ["AR", "AR", "AA", "AA"]
    sender = _sender(ctx, hospital, max_attempts=5)
    assert loop.run(sender.deliver_all(timeout_s=30)) == 2
    loop.run(sender.close())
    rows = _rows(store)
    assert [r.status for r in rows] == ["delivered", "delivered"]
    assert [a.outcome for a in _attempts(store, rows[0].id)] == ["AR", "AR", "AA"]
    sent = [parse(p).control_id for p in hospital.received]
    assert sent == [rows[0].control_id] * 3 + [rows[1].control_id]  # in order


def test_commit_reject_is_dead_at_once_and_does_not_block_the_next(
    ctx: HubContext, store: Store, partners: PartnerDirectory, hospital: Hospital, loop: Loop
) -> None:
    view_ = store.run(lambda w: OrderService(w, partners).place(place_cmd()))
    driver = Driver(store, partners, view_)
    driver.step()
    _drain(ctx, loop)
    hospital.script = ["CR"]
    sender = _sender(ctx, hospital)
    assert loop.run(sender.deliver_all(timeout_s=30)) == 1
    loop.run(sender.close())
    assert [r.status for r in _rows(store)] == ["dead", "delivered"]
    assert [a.outcome for a in _attempts(store, _rows(store)[0].id)] == ["CR"]


def test_unreachable_hospital_is_recorded_per_attempt(
    ctx: HubContext, store: Store, partners: PartnerDirectory, loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    store.run(lambda w: OrderService(w, partners).place(place_cmd()))
    _drain(ctx, loop)
    sender = OutboundSender(
        store,
        partners,
        SenderSettings(max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.05, ack_timeout_s=0.5),
        endpoint_overrides={"st-marys": "mllp://127.0.0.1:9"},
    )
    loop.run(sender.deliver_all(timeout_s=1))
    row = _rows(store)[0]
    outcomes = [a.outcome for a in _attempts(store, row.id)]
    assert len(outcomes) > 2
    assert set(outcomes) == {"connect-error"}
    # ...and told to the operator, one line per attempt (ids and codes, no message content)
    lines = [r.getMessage() for r in caplog.records if r.name == "adapters.hl7v2.outbound"]
    assert any(f"out:{row.id} to st-marys attempt 1 failed: connect-error" in m for m in lines)


def test_an_outage_dead_letters_nothing_and_the_order_of_messages_is_kept(
    ctx: HubContext, store: Store, partners: PartnerDirectory, hospital: Hospital, loop: Loop
) -> None:
    """The hospital's endpoint takes no connection for longer than the attempts last. Before, each
    message died in turn after its last attempt, the next one went once the endpoint was back, and
    the replayed ones arrived after it: the hospital got an order's "held" before its "accepted".
    Now the head keeps its place (one alert), and everything goes in order when the endpoint returns."""
    driver = Driver.place(store, partners)
    _drain(ctx, loop)
    down = OutboundSender(
        store,
        partners,
        SenderSettings(max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.02, ack_timeout_s=0.5),
        endpoint_overrides={"st-marys": "mllp://127.0.0.1:9"},
    )
    loop.run(down.deliver_all(timeout_s=0.5))
    driver.step()  # a later status of the same order, owed while the endpoint is down
    _drain(ctx, loop)
    loop.run(down.deliver_all(timeout_s=0.5))
    loop.run(down.release_leases())
    rows = _rows(store)
    assert [r.status for r in rows] == ["pending", "pending"]
    assert len(_attempts(store, rows[0].id)) > 2
    assert _attempts(store, rows[1].id) == []  # it waits behind the head
    _drain(ctx, loop)
    alerts = store.read(lambda s: list(s.scalars(select(Alert).where(Alert.kind.like("hl7v2.%")))))
    assert [a.kind for a in alerts] == ["hl7v2.partner-unreachable"]
    assert f"out:{rows[0].id}" in alerts[0].message
    assert "MRN" not in alerts[0].message

    back = _sender(ctx, hospital)
    assert loop.run(back.deliver_all(timeout_s=30)) == 2
    loop.run(back.close())
    assert [r.status for r in _rows(store)] == ["delivered", "delivered"]
    assert [parse(p).control_id for p in hospital.received] == [r.control_id for r in rows]

    # The operator sees that the partner is back: before, the unreachable alert stayed open (and
    # escalated) after the hospital took every message again, and nothing said it had recovered.
    _drain(ctx, loop)
    alerts = store.read(lambda s: list(s.scalars(select(Alert).where(Alert.kind.like("hl7v2.%")))))
    by_kind = {a.kind: a for a in alerts}
    assert sorted(by_kind) == ["hl7v2.partner-reachable", "hl7v2.partner-unreachable"]
    back_alert = by_kind["hl7v2.partner-reachable"]
    assert back_alert.severity == "info"
    assert back_alert.message.startswith("st-marys answers again on ")
    assert f"(AA to ORU^R01 {rows[0].control_id}, out:{rows[0].id})" in back_alert.message
    assert "after taking no connection for " in back_alert.message
    assert f"2 message(s) waited, out:{rows[0].id} first" in back_alert.message
    down_alert = by_kind["hl7v2.partner-unreachable"]
    assert down_alert.acknowledged_by == "hub"
    note = store.read(lambda s: s.scalars(select(AlertAcknowledgement)).one())
    assert note.note == f"st-marys answers again (AA to out:{rows[0].id}); resolved by the hub"
    entry = store.read(lambda s: s.scalars(select(AuditEntry).where(AuditEntry.entity_id == down_alert.id)).one())
    assert entry.actor == "hl7v2-out:st-marys"
    assert len(events(store, "alert.acknowledged")) == 1

    # Down again later: a new alert, and it is resolved again (the first stays as it was).
    loop.run(back.release_leases())
    driver.step()
    _drain(ctx, loop)
    loop.run(down.deliver_all(timeout_s=0.5))
    loop.run(down.release_leases())
    _drain(ctx, loop)
    again = _sender(ctx, hospital)
    assert loop.run(again.deliver_all(timeout_s=30)) == 1
    loop.run(again.close())
    loop.run(again.release_leases())
    _drain(ctx, loop)
    alerts = store.read(lambda s: list(s.scalars(select(Alert).order_by(Alert.raised_at, Alert.id))))
    assert [(a.kind, a.acknowledged_by) for a in alerts if a.kind.startswith("hl7v2.")] == [
        ("hl7v2.partner-unreachable", "hub"),
        ("hl7v2.partner-reachable", None),
        ("hl7v2.partner-unreachable", "hub"),
        ("hl7v2.partner-reachable", None),
    ]


def test_a_partner_that_answers_after_a_retry_raises_no_reachable_alert(
    ctx: HubContext, store: Store, partners: PartnerDirectory, hospital: Hospital, loop: Loop
) -> None:
    """One refused attempt before delivery is no outage: no alert either way."""
    store.run(lambda w: OrderService(w, partners).place(place_cmd()))
    _drain(ctx, loop)
    hospital.script = ["AE"]
    sender = _sender(ctx, hospital)
    assert loop.run(sender.deliver_all(timeout_s=30)) == 1
    loop.run(sender.close())
    _drain(ctx, loop)
    assert [a.outcome for a in _attempts(store, _rows(store)[0].id)] == ["AE", "AA"]
    assert store.read(lambda s: list(s.scalars(select(Alert)))) == []


def test_partner_message_type_is_honoured(
    ctx: HubContext, store: Store, partners: PartnerDirectory, hospital: Hospital, loop: Loop
) -> None:
    profile = partners.profiles["st-marys"]
    channels = tuple(
        c.model_copy(update={"message": "ORM^O01"}) if c.adapter == "hl7v2-mllp" and c.direction == "outbound" else c
        for c in profile.channels
    )
    directory = PartnerDirectory({**partners.profiles, "st-marys": profile.model_copy(update={"channels": channels})})
    from tests.adapters.hl7v2.conftest import make_ctx

    ctx2 = make_ctx(store, directory)
    store.run(lambda w: OrderService(w, directory).place(place_cmd()))
    _drain(ctx2, loop)
    sender = _sender(ctx2, hospital)
    loop.run(sender.deliver_all(timeout_s=30))
    loop.run(sender.close())
    assert parse(hospital.received[0]).message_type == "ORM^O01"
    assert parse(hospital.received[0]).segment("ORC")[1] == "SC"  # type: ignore[index]


def test_order_placed_over_mllp_is_reported_back(
    ctx: HubContext, store: Store, hospital: Hospital, loop: Loop, sender: object
) -> None:
    from tests.adapters.hl7v2.conftest import Sender

    assert isinstance(sender, Sender)
    sender.send(m.orm("PL-OUT", "MRN-OUT"))
    _drain(ctx, loop)
    out = _sender(ctx, hospital)
    assert loop.run(out.deliver_all(timeout_s=30)) == 1
    loop.run(out.close())
    msg = parse(hospital.received[0])
    assert msg.segment("ORC")[2].startswith("PL-OUT")  # type: ignore[index]
    assert msg.segment("PID")[3].startswith("MRN-OUT^^^STMARYS&")  # type: ignore[index]
    shown = ops.show(ctx, f"out:{_rows(store)[0].id}")
    assert "MRN-OUT" not in shown
    assert "Rivera" not in shown
    assert "#1" in shown
    unmasked = ops.show(ctx, f"out:{_rows(store)[0].id}", unmasked=True)
    assert "MRN-OUT" in unmasked


def test_middle_names_go_back_in_their_own_component(
    ctx: HubContext, store: Store, hospital: Hospital, loop: Loop, sender: object
) -> None:
    """PID-5 went out as ``Rivera^Ana Maria Luisa``: every given name in XPN.2, so the hospital's
    EHR read the middle names as part of the first name (and matched the patient on that)."""
    from tests.adapters.hl7v2.conftest import Sender

    assert isinstance(sender, Sender)
    order = m.orm("PL-XPN", "MRN-XPN").replace(b"|Rivera^Ana^^", b"|Rivera^Ana^Maria Luisa^")
    assert b"Rivera^Ana^Maria Luisa^" in order
    sender.send(order)
    _drain(ctx, loop)
    out = _sender(ctx, hospital)
    assert loop.run(out.deliver_all(timeout_s=30)) == 1
    loop.run(out.close())
    name = parse(hospital.received[0]).segment("PID")[5]  # type: ignore[index]
    assert name.split("^")[:3] == ["Rivera", "Ana", "Maria Luisa"], name


@pytest.mark.parametrize(("env", "processing_id"), [("production", "P"), ("development", "T")])
def test_outbound_messages_carry_the_hubs_processing_id(
    store: Store, partners: PartnerDirectory, hospital: Hospital, loop: Loop, env: str, processing_id: str
) -> None:
    """Every outbound message said MSH-11 P, also from a development or test hub: a hospital's
    production EHR could not tell a test hub's status messages from real ones."""
    from tests.adapters.hl7v2.conftest import make_ctx

    ctx = make_ctx(store, partners, env=env)
    store.run(lambda w: OrderService(w, partners).place(place_cmd()))
    _drain(ctx, loop)
    out = _sender(ctx, hospital)
    assert loop.run(out.deliver_all(timeout_s=30)) == 1
    loop.run(out.close())
    assert parse(hospital.received[0]).segment("MSH")[11] == processing_id  # type: ignore[index]


def test_mutual_tls_to_the_hospital_with_the_profiles_certificate(
    ctx: HubContext, store: Store, partners: PartnerDirectory, loop: Loop, tmp_path: Path
) -> None:
    """An ``mllp+tls://`` endpoint: the hub checks the hospital's certificate against the profile's
    ``mllp_ca`` and presents ``mllp_client_cert``; without that certificate nothing is delivered."""
    pki = make_pki(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    server.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    server.verify_mode = ssl.CERT_REQUIRED
    hospital = Hospital(tls=server)
    loop.run(hospital.start())
    bundle = tmp_path / "st-marys-client.pem"  # certificate and key in one PEM, as the profile says
    bundle.write_bytes(pki.client_cert.read_bytes() + pki.client_key.read_bytes())
    profile = partners.profiles["st-marys"]

    def sender_with(secrets: dict[str, str]) -> OutboundSender:
        tls_profile = profile.model_copy(update={"secrets": secrets})
        return OutboundSender(
            store,
            PartnerDirectory({**partners.profiles, "st-marys": tls_profile}),
            SenderSettings(max_attempts=1, backoff_base_s=0.01, ack_timeout_s=2.0, poll_s=0.05),
            endpoint_overrides={"st-marys": f"mllp+tls://127.0.0.1:{hospital.port}"},
        )

    try:
        store.run(lambda w: OrderService(w, partners).place(place_cmd()))
        _drain(ctx, loop)
        anonymous = sender_with({"mllp_ca": f"file:{pki.ca_cert}"})
        loop.run(anonymous.deliver_all(timeout_s=10))
        loop.run(anonymous.close())
        loop.run(anonymous.release_leases())  # the next sender is another process's
        row = _rows(store)[0]
        assert hospital.received == []
        outcomes = [a.outcome for a in _attempts(store, row.id)]
        # refused in the handshake (the partner takes no connection: the message waits for the
        # certificate to be fixed) or right after it (a broken connection: dead after its attempts)
        assert outcomes in (["connect-error"], ["io-error"])
        assert row.status == ("pending" if outcomes == ["connect-error"] else "dead")

        store.run(lambda w: OrderService(w, partners).place(place_cmd()))
        _drain(ctx, loop)
        mutual = sender_with({"mllp_ca": f"file:{pki.ca_cert}", "mllp_client_cert": f"file:{bundle}"})
        expected = [r for r in _rows(store) if r.status == "pending"]
        assert loop.run(mutual.deliver_all(timeout_s=10)) == len(expected)
        loop.run(mutual.close())
        assert _rows(store)[1].status == "delivered"
        assert [parse(p).control_id for p in hospital.received] == [r.control_id for r in expected]
    finally:
        loop.run(hospital.stop())


@pytest.mark.parametrize("cert", ["a missing file", "an env reference", "a certificate without its key"])
def test_tls_secrets_that_are_not_pem_files_are_named_in_the_log(
    ctx: HubContext,
    store: Store,
    partners: PartnerDirectory,
    loop: Loop,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    cert: str,
) -> None:
    """A ``mllp_client_cert`` that was set but could not be loaded (a missing file, an ``env:``
    reference, a PEM without its key) only cost a warning: the hub connected without its
    certificate and delivered the patient's ORU to an endpoint that did not ask for one. Like an
    unreadable ``mllp_ca`` (the test below) it now sends nothing and names the secret."""
    pki = make_pki(tmp_path)
    monkeypatch.setenv("ST_MARYS_MLLP_PEM", pki.client_cert.read_text() + pki.client_key.read_text())
    ref = {
        "a missing file": f"file:{tmp_path}/st-marys-client.pem",
        "an env reference": "env:ST_MARYS_MLLP_PEM",
        "a certificate without its key": f"file:{pki.client_cert}",
    }[cert]
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(pki.server_cert), str(pki.server_key))  # asks for no client certificate
    endpoint = Hospital(tls=server)
    loop.run(endpoint.start())
    secrets = {"mllp_ca": f"file:{pki.ca_cert}", "mllp_client_cert": ref}
    profile = partners.profiles["st-marys"].model_copy(update={"secrets": secrets})
    sender = OutboundSender(
        store,
        PartnerDirectory({**partners.profiles, "st-marys": profile}),
        SenderSettings(max_attempts=1, backoff_base_s=0.01, ack_timeout_s=2.0, poll_s=0.05),
        endpoint_overrides={"st-marys": f"mllp+tls://127.0.0.1:{endpoint.port}"},
    )
    try:
        store.run(lambda w: OrderService(w, partners).place(place_cmd()))
        _drain(ctx, loop)
        assert loop.run(sender.deliver_all(timeout_s=10)) == 0
        loop.run(sender.close())
    finally:
        loop.run(endpoint.stop())
    assert endpoint.received == []
    row = _rows(store)[0]
    attempts = _attempts(store, row.id)
    assert [a.outcome for a in attempts] == ["tls-config"]
    assert "mllp_client_cert" in (attempts[0].error or "")
    lines = [r.getMessage() for r in caplog.records if r.name == "adapters.hl7v2.outbound"]
    assert any("mllp_client_cert" in line and "nothing sent" in line for line in lines), lines


@pytest.mark.parametrize("pin", ["a missing file", "an unset variable", "not a certificate"])
def test_a_pinned_ca_that_cannot_be_read_sends_nothing(
    ctx: HubContext,
    store: Store,
    partners: PartnerDirectory,
    loop: Loop,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pin: str,
) -> None:
    """The profile's ``mllp_ca`` pins the hospital's CA. When the reference did not resolve, the
    sender fell back to the system trust store and delivered the patient's ORU to whoever held a
    certificate from any CA there for the endpoint (here the trust store is the test CA, standing in
    for a public CA that issued an impostor's certificate)."""
    pki = make_pki(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_cert))  # the "system" trust store
    monkeypatch.delenv("CGTHUB_TEST_STMARYS_CA", raising=False)
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    ref = {
        "a missing file": f"file:{tmp_path}/st-marys-ca.pem",
        "an unset variable": "env:CGTHUB_TEST_STMARYS_CA",
        "not a certificate": f"file:{tmp_path}/garbage.pem",
    }[pin]
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    impostor = Hospital(tls=server)
    loop.run(impostor.start())
    profile = partners.profiles["st-marys"].model_copy(update={"secrets": {"mllp_ca": ref}})
    sender = OutboundSender(
        store,
        PartnerDirectory({**partners.profiles, "st-marys": profile}),
        SenderSettings(max_attempts=1, backoff_base_s=0.01, ack_timeout_s=2.0, poll_s=0.05),
        endpoint_overrides={"st-marys": f"mllp+tls://127.0.0.1:{impostor.port}"},
    )
    try:
        store.run(lambda w: OrderService(w, partners).place(place_cmd()))
        _drain(ctx, loop)
        assert loop.run(sender.deliver_all(timeout_s=10)) == 0
        loop.run(sender.close())
    finally:
        loop.run(impostor.stop())
    assert impostor.received == []
    row = _rows(store)[0]
    assert row.status == "dead"
    assert [a.outcome for a in _attempts(store, row.id)] == ["tls-config"]


def test_an_appointment_event_reports_the_orders_status_not_the_appointments(
    ctx: HubContext, store: Store, partners: PartnerDirectory, loop: Loop
) -> None:
    """The collection-scheduled event's "status" is the appointment's (booked/cancelled): the ORU
    told the hospital an order on hold was "cancelled"."""
    from datetime import UTC, datetime, timedelta

    from adapters.hl7v2.build import segments
    from hub import canonical
    from hub.orders.scheduling import ScheduleCollection, SchedulingService
    from hub.orders.schemas import PlaceHold

    d = Driver.place(store, partners)

    def schedule(**kw: object) -> None:
        cmd = ScheduleCollection(order_id=d.order.id, partner="st-marys", appointment_id="A1", **kw)  # type: ignore[arg-type]
        store.run(lambda w: SchedulingService(w, partners).schedule(cmd))

    schedule(action="book", start=datetime.now(UTC) + timedelta(days=3))
    store.run(lambda w: OrderService(w, partners).hold(PlaceHold(order_id=d.order.id, reason="QA review")))
    schedule(action="cancel")
    _drain(ctx, loop)
    last = _rows(store)[-1]
    assert last.event_type == "order.collection_scheduled"
    snap = canonical.loads(last.snapshot)
    assert snap["status"] == "on-hold"
    assert not any("cancelled" in s for s in segments(snap) if s.startswith(("ORC", "OBX")))


def test_messages_after_release_keep_the_report_final(
    ctx: HubContext, store: Store, partners: PartnerDirectory, loop: Loop
) -> None:
    """The messages after release (shipped, received at site, a hold) carry the final release
    results, but said OBR-25 "P": the hospital's final report turned preliminary again, which an
    EHR refuses (or shows the release results as not final) until the order was administered."""
    from adapters.hl7v2.build import segments
    from hub import canonical

    d = Driver.place(store, partners)
    d.walk_to("received-at-site")
    store.run(lambda w: OrderService(w, partners).hold(PlaceHold(order_id=d.order.id, reason="QA review")))
    _drain(ctx, loop)
    seen = []
    for row in _rows(store):
        snap = canonical.loads(row.snapshot)
        segs = segments(snap)
        obr = next(s for s in segs if s.startswith("OBR|")).split("|")
        results = any(s.startswith("OBX|") and "^CGTHUB-RELEASE" in s for s in segs)
        seen.append((snap["stage"], obr[25], results))
    stages = [stage for stage, _, _ in seen]
    first = stages.index("released")
    assert all(status == "P" and not results for _, status, results in seen[:first])
    assert stages[first:] == ["released", "shipped-to-site", "received-at-site", "received-at-site"]  # + the hold
    assert [(status, results) for _, status, results in seen[first:]] == [("F", True)] * 4


def test_numeric_results_leave_as_hl7_numbers(
    ctx: HubContext, store: Store, partners: PartnerDirectory, loop: Loop
) -> None:
    """The hub takes any value Python reads as a number ("9.0E1", " 90 "), and sent it as is in an
    NM OBX-5, which HL7 defines as an optional sign, digits and a point: a strict receiver refuses
    the release results (AE/AR). Values that are not finite numbers go as ST, never as NM."""
    from adapters.hl7v2.build import build
    from hub import canonical

    d = Driver.place(store, partners)
    d.walk_to("released")
    _drain(ctx, loop)
    snap = canonical.loads(_rows(store)[-1].snapshot)
    by_code = {r["code"]: r for r in snap["results"]}
    by_code["viability"]["value"] = "9.0E1"
    by_code["car-expression"]["value"] = " 30 "
    by_code["vcn"]["value"] = "NaN"
    obx = {s[3].split("^")[0]: s for s in parse(build(snap)).segments if s[0] == "OBX"}
    assert (obx["viability"][2], obx["viability"][5]) == ("NM", "90")
    assert (obx["car-expression"][2], obx["car-expression"][5]) == ("NM", "30")
    assert (obx["vcn"][2], obx["vcn"][5]) == ("ST", "NaN")
    assert (obx["endotoxin"][2], obx["sterility"][2]) == ("NM", "ST")


def test_a_sending_lease_outlasts_one_attempt() -> None:
    """An attempt may take 10 s to connect and 30 s for the ACK: a 30 s lease let a second process
    send the same message while the first still waited."""
    assert SenderSettings(ack_timeout_s=30.0, lease_s=30.0).lease_span_s >= 45.0
    assert SenderSettings(ack_timeout_s=2.0, lease_s=30.0).lease_span_s == 30.0
