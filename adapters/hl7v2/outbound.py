"""Outbound HL7 v2: order events → status and result messages delivered to the hospitals over MLLP.

Two halves, joined by the ``hl7v2_outbound`` table (an outbox of its own):

* **The consumer** (``hl7v2-outbound``, on the bus) handles order events inside a unit of work: for
  every participant of the order (ordering hospital, collection and treatment sites) whose profile
  has an outbound ``hl7v2-mllp`` channel, it writes one row with a snapshot of what the message
  says — taken at event time, in the same transaction that records the event as handled, so it is
  exactly-once per partner and event. Events: accepted, stage changed (the move to ``released``
  carries the final release results), held, hold released, cancelled, collection scheduled.
* **The sender** (one asyncio loop per partner, under a lease so one process sends per partner)
  builds the message once (hl7apy, in a worker thread, never in the committer), stores the bytes,
  sends them over a persistent :class:`~adapters.hl7v2.client.MllpClient`, waits for the ACK whose
  MSA-2 names it, and records every attempt in ``hl7v2_outbound_attempt``. AA/CA → delivered;
  AE/AR/CE, timeouts and broken connections → retried with capped exponential backoff; CR, a build
  failure or the last attempt → ``dead`` with an alert. (An original-mode AR is not final: HL7 v2.5
  §2.9.2.2 gives it to a message the receiver could not process "for reasons unrelated to its
  content or format (system down, internal error)", which it will likely accept later. CR, the
  enhanced-mode commit reject of the message type, version or processing id, is.) A partner that
  takes no connection at all (an outage) dead-letters nothing: after the last attempt the head
  message raises one ``hl7v2.partner-unreachable`` alert and is retried every ``backoff_max_s``
  until it goes. When the partner answers again, an info alert ``hl7v2.partner-reachable`` says so
  (for how long it took no connection, how many messages waited) and the hub acknowledges the open
  unreachable alert (by ``hub``, audited), so it neither stays open nor escalates.
  Messages to one partner leave in order: a message waiting for its retry holds back the ones
  after it (MLLP receivers expect sequence).
  Delivery is at-least-once: a crash between the ACK and its record resends the same bytes with
  the same MSH-10, which the receiver recognises. Operators replay dead messages
  (``cgt-hub messages replay out:N``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from adapters.hl7v2.ack import ack_code_of, new_control_id
from adapters.hl7v2.build import SUPPORTED, BuildError, build
from adapters.hl7v2.client import DeliveryError, Endpoint, MllpClient
from adapters.hl7v2.mapping import MappingDefinitionError, load_mapping_set
from adapters.hl7v2.mapping import mapping_root as resolve_mapping_root
from hub import canonical
from hub.context import HubContext
from hub.db import leases
from hub.db.models import OrderParticipant, TherapyOrder
from hub.db.models_hl7v2 import Hl7v2Outbound, Hl7v2OutboundAttempt
from hub.db.models_scheduling import CollectionAppointment
from hub.db.types import iso_utc
from hub.db.uow import Store, Work
from hub.events import AlertRaised, Envelope, EventType
from hub.fhirstore.repository import ResourceRepository
from hub.messaging.consumers import Consumer
from hub.orders.repository import OrderRepository
from hub.partners.loader import PartnerDirectory, resolve_secret
from hub.partners.schemas import Profile
from hub.products.registry import get_product

log = logging.getLogger(__name__)
ADAPTER = "hl7v2-mllp"
CONSUMER_NAME = "hl7v2-outbound"
EVENTS = {
    EventType.ORDER_ACCEPTED.value,
    EventType.ORDER_STAGE_CHANGED.value,
    EventType.ORDER_HELD.value,
    EventType.ORDER_HOLD_RELEASED.value,
    EventType.ORDER_CANCELLED.value,
    EventType.ORDER_COLLECTION_SCHEDULED.value,
}
RECIPIENT_ROLES = {"ordering", "collection", "treatment"}
SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
ACK_BYTES_KEPT = 4096
# A connection the partner never accepted: no message is ever dead-lettered for it (see _record).
UNREACHABLE = "connect-error"
# Raised once when a partner's head message has used its attempts on connections it never took;
# when the partner answers again, REACHABLE_ALERT says so and the hub acknowledges the first one.
UNREACHABLE_ALERT = "hl7v2.partner-unreachable"
REACHABLE_ALERT = "hl7v2.partner-reachable"
HUB_ACKNOWLEDGER = "hub"


def outbound_channel(profile: Profile) -> Any | None:
    for channel in profile.channels_of(ADAPTER):
        if channel.direction in ("outbound", "both") and channel.endpoint:
            return channel
    return None


# --------------------------------------------------------------------------- the consumer
def _namespaces(profile: Profile, mapping_root: Path) -> dict[str, str]:
    """system → the partner's own assigning-authority namespace (reverse of its inbound mapping)."""
    out: dict[str, str] = {}
    for channel in profile.channels_of(ADAPTER):
        if channel.direction in ("inbound", "both") and channel.mappings:
            try:
                tables = load_mapping_set(mapping_root, tuple(channel.mappings)).tables
            except MappingDefinitionError:
                continue
            for namespace, system in tables.get("assigning_authorities", {}).items():
                out.setdefault(str(system), str(namespace))
    return out


def snapshot(
    work: Work,
    order: TherapyOrder,
    envelope: Envelope,
    profile: Profile,
    channel: Any,
    mapping_root: Path,
    processing_id: str = "P",
) -> dict[str, Any]:
    data = envelope.data
    product = get_product(order.product_code)
    stage_code = str(data.get("to_stage") or data.get("stage") or order.stage)
    # Only a stage change's payload carries the order's status; other events' "status" is their
    # own (an appointment's "booked"/"cancelled", a shipment's, a customs filing's).
    status = order.status
    if envelope.type == EventType.ORDER_STAGE_CHANGED.value and data.get("status"):
        status = str(data["status"])
    elif envelope.type == EventType.ORDER_HELD.value:
        status = "on-hold"
    elif envelope.type == EventType.ORDER_CANCELLED.value:
        status = "revoked"
    elif envelope.type == EventType.ORDER_ACCEPTED.value:
        status = "active"
    patient = ResourceRepository.for_work(work).read("Patient", order.patient_id).content
    namespaces = _namespaces(profile, mapping_root)
    identifiers = []
    for ident in patient.get("identifier", []) or []:
        code = next((c.get("code") for c in (ident.get("type") or {}).get("coding", []) if c.get("code")), "")
        identifiers.append(
            {
                "system": ident.get("system"),
                "value": ident.get("value"),
                "type": code,
                "namespace": namespaces.get(str(ident.get("system")), ""),
            }
        )
    name = (patient.get("name") or [{}])[0]
    snap: dict[str, Any] = {
        **_addressing(profile, channel),
        "control_id": new_control_id(),
        "processing_id": processing_id,
        "event_type": envelope.type,
        "occurred_at": iso_utc(envelope.occurred_at),
        "order_id": order.id,
        "coi": order.coi,
        "coi_eye_readable": f"CH {order.coi[2:7]} {order.coi[7:9]} {order.coi[9:15]} {order.coi_check}",
        "placer_number": order.placer_number,
        "ordering_partner": order.ordering_partner,
        "product_code": product.code,
        "product_name": product.name,
        "stage": stage_code,
        "stage_name": product.stage(stage_code).name if stage_code in {s.code for s in product.stages} else stage_code,
        "status": status,
        "patient": {
            "identifiers": identifiers,
            "family": name.get("family", ""),
            # XPN: PID-5.2 is the first given name, PID-5.3 the second and further given names.
            "given": str((name.get("given") or [""])[0]),
            "middle": " ".join(str(g) for g in (name.get("given") or [])[1:]),
            "birth_date": patient.get("birthDate", ""),
            "sex": SEX.get(str(patient.get("gender", "")), ""),
        },
        "final": False,
        "results": [],
    }
    if envelope.type == EventType.ORDER_HELD.value:
        snap["hold_kind"] = data.get("kind", "")
    if envelope.type == EventType.ORDER_COLLECTION_SCHEDULED.value:
        row = work.session.execute(
            select(CollectionAppointment).where(
                CollectionAppointment.order_id == order.id,
                CollectionAppointment.appointment_id == data.get("appointment_id"),
            )
        ).scalar_one_or_none()
        if row is not None and row.status == "booked":
            snap["appointment"] = {"start": iso_utc(row.start)}
    released = "released" in {s.code for s in product.stages} and product.index(stage_code) >= product.index("released")
    if released:
        # Every message from release on carries the final release results: a later status (shipped,
        # received, held) must not turn the hospital's final report back into a preliminary one.
        snap["final"] = True
        for result in OrderRepository.from_session(work.session).current_results(order.id):
            spec = product.spec(result.test_code)
            if spec is None:
                continue
            if spec.expected is not None:
                rng = spec.expected
            else:
                low = f">={spec.min:g}" if spec.min is not None else ""
                high = f"<={spec.max:g}" if spec.max is not None else ""
                rng = " ".join(p for p in (low, high) if p)
            snap["results"].append(
                {
                    "code": spec.code,
                    "name": spec.name,
                    "loinc": spec.loinc or "",
                    "value": result.value,
                    "unit": result.unit or "",
                    "range": rng,
                    "in_spec": result.in_spec,
                    "numeric": spec.expected is None,
                    "observed_at": iso_utc(result.recorded_at),
                }
            )
    return snap


def _addressing(profile: Profile, channel: Any) -> dict[str, Any]:
    """What the partner's profile decides about a message: its type and the facilities in MSH."""
    return {
        "message_type": channel.message or "ORU^R01",
        "sending_facility": channel.sending_facility or "CGTHUB",
        "receiving_facility": profile.identifiers.get("hl7_facility", ""),
    }


def rebuilt_snapshot(old: dict[str, Any], profile: Profile, channel: Any, mapping_root: Path) -> dict[str, Any]:
    """The snapshot of a message to be built again (``messages replay --rebuild``): what happened
    (event, order, patient, status, results) as it was at event time; what the partner's profile
    and mappings decide (message type, facilities, identifier namespaces) as they are now; and a
    new control id, because a message whose content differs must not reuse the old MSH-10."""
    namespaces = _namespaces(profile, mapping_root)
    snap = {**old, **_addressing(profile, channel), "control_id": new_control_id()}
    patient = dict(old.get("patient") or {})
    patient["identifiers"] = [
        {**ident, "namespace": namespaces.get(str(ident.get("system")), "")}
        for ident in patient.get("identifiers", []) or []
    ]
    snap["patient"] = patient
    return snap


def make_consumer(partners: PartnerDirectory, mapping_root: Path, processing_id: str = "P") -> Consumer:
    def handle(work: Work, envelope: Envelope) -> None:
        if envelope.type not in EVENTS:
            return
        order_id = envelope.data.get("order_id")
        order = work.session.get(TherapyOrder, order_id) if order_id else None
        if order is None:
            return
        recipients = sorted(
            set(
                work.session.scalars(
                    select(OrderParticipant.partner_id).where(
                        OrderParticipant.order_id == order.id, OrderParticipant.role.in_(RECIPIENT_ROLES)
                    )
                )
            )
        )
        for partner_id in recipients:
            profile = partners.get(partner_id)
            channel = outbound_channel(profile) if profile is not None else None
            if profile is None or channel is None:
                continue
            exists = work.session.execute(
                select(Hl7v2Outbound.id).where(
                    Hl7v2Outbound.partner == partner_id, Hl7v2Outbound.event_id == envelope.event_id
                )
            ).first()
            if exists is not None:
                continue
            snap = snapshot(work, order, envelope, profile, channel, mapping_root, processing_id)
            row = Hl7v2Outbound(
                control_id=snap["control_id"],
                partner=partner_id,
                endpoint=str(channel.endpoint),
                event_id=envelope.event_id,
                event_type=envelope.type,
                order_id=order.id,
                message_type=snap["message_type"],
                snapshot=canonical.dumps(snap),
                payload=None,
                status="pending",
                attempts=0,
                next_attempt_at=work.now,
                created_at=work.now,
            )
            work.session.add(row)
            work.session.flush()
            work.audit(
                "create",
                "Hl7v2Outbound",
                str(row.id),
                new={"partner": partner_id, "event": envelope.event_id, "type": snap["message_type"]},
                reason=f"{snap['message_type']} owed to {partner_id} for {envelope.type}",
            )

    return Consumer(CONSUMER_NAME, ("order.#",), handle)


def consumers(ctx: HubContext) -> list[Consumer]:
    settings = ctx.settings
    return [make_consumer(ctx.partners, resolve_mapping_root(settings.mappings_dir), settings.hl7v2_processing_id)]


# --------------------------------------------------------------------------- the sender
@dataclass
class Due:
    id: int
    control_id: str
    message_type: str
    snapshot: dict[str, Any]
    payload: bytes | None
    attempts: int
    next_attempt_at: datetime
    order_id: str | None


@dataclass
class SenderSettings:
    max_attempts: int = 8
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    ack_timeout_s: float = 30.0
    poll_s: float = 0.5
    lease_s: float = 30.0

    def backoff(self, attempts: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_base_s * (2 ** max(0, attempts - 1))))

    @property
    def lease_span_s(self) -> float:
        """How long a partner's sending lease is taken for: at least one whole attempt (connect,
        up to 10 s, then the ACK wait) and a margin. Shorter, another process could take the lease
        mid-attempt and send the same message (same MSH-10) while the first still waits."""
        return max(self.lease_s, min(10.0, self.ack_timeout_s) + self.ack_timeout_s + 5.0)


def _log_failed_attempt(partner: str, due: Due, outcome: str, recorded: tuple[str, int, datetime] | None) -> None:
    """One line per failed attempt for the operator (ids and codes only, no message content);
    ``cgt-hub messages show out:<id>`` has the attempts in full."""
    if recorded is None:
        return
    status, attempts, next_at = recorded
    if status == "dead":
        log.error("hl7v2 out:%s to %s dead after %d attempt(s): %s", due.id, partner, attempts, outcome)
    else:
        log.warning(
            "hl7v2 out:%s to %s attempt %d failed: %s; next attempt at %s",
            due.id,
            partner,
            attempts,
            outcome,
            next_at.strftime("%H:%M:%SZ"),
        )


def client_ssl_context(profile: Profile, endpoint: Endpoint) -> ssl.SSLContext | None:
    """TLS for an ``mllp+tls://`` endpoint; the profile's ``mllp_client_cert`` secret (a PEM with
    certificate and key) is presented for mutual TLS, ``mllp_ca`` (a PEM) overrides the trust store."""
    if not endpoint.tls:
        return None
    # Both fail closed: ``mllp_ca`` is a pin and ``mllp_client_cert`` (a ``file:`` PEM with the
    # certificate and its key) is what the hospital checks; either set but unusable, nothing is sent.
    context = ssl.create_default_context()
    ca_ref = profile.secrets.get("mllp_ca")
    if ca_ref:
        # The profile pins the hospital's CA: if it cannot be read, nothing is sent. Falling back to
        # the system trust store would accept any public CA's certificate for the endpoint's name.
        ca_pem = resolve_secret(ca_ref)
        if not ca_pem:
            raise DeliveryError("tls-config", f"partner {profile.id}: its mllp_ca is not readable; nothing sent")
        try:
            context = ssl.create_default_context(cadata=ca_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise DeliveryError("tls-config", f"partner {profile.id}: its mllp_ca is not a PEM CA certificate") from exc
    cert_ref = profile.secrets.get("mllp_client_cert")
    if cert_ref:
        # Set means the hospital expects the hub's certificate: if it cannot be loaded, nothing is
        # sent. Connecting without it would hand the message to any endpoint that does not ask for
        # one (a wrong host behind the name, a receiver misconfigured to optional client auth).
        path = Path(cert_ref[5:]) if cert_ref.startswith("file:") else None
        if path is None or not path.is_file():
            raise DeliveryError(
                "tls-config",
                f"partner {profile.id}: its mllp_client_cert is not a PEM file (file:/path, certificate and key) "
                "that exists; nothing sent",
            )
        try:
            context.load_cert_chain(str(path))
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise DeliveryError(
                "tls-config",
                f"partner {profile.id}: its mllp_client_cert is not a PEM with a certificate and its key; nothing sent",
            ) from exc
    return context


@dataclass
class OutboundSender:
    store: Store
    partners: PartnerDirectory
    settings: SenderSettings = field(default_factory=SenderSettings)
    endpoint_overrides: dict[str, str] = field(default_factory=dict)
    ssl_overrides: dict[str, ssl.SSLContext] = field(default_factory=dict)
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{time.monotonic_ns()}")
    _clients: dict[str, MllpClient] = field(default_factory=dict)
    delivered: int = 0
    busy: list[str] = field(default_factory=list)  # partners deliver_all left to another process

    def targets(self) -> dict[str, Endpoint]:
        out: dict[str, Endpoint] = {}
        for profile in self.partners.profiles.values():
            channel = outbound_channel(profile)
            if channel is not None:
                out[profile.id] = Endpoint.parse(self.endpoint_overrides.get(profile.id, str(channel.endpoint)))
        return out

    def _client(self, partner: str, endpoint: Endpoint) -> MllpClient:
        client = self._clients.get(partner)
        if client is None or client.endpoint != endpoint:
            profile = self.partners.get(partner)
            context = self.ssl_overrides.get(partner)
            if context is None and profile is not None:
                context = client_ssl_context(profile, endpoint)
            client = MllpClient(endpoint, ssl_context=context, connect_timeout_s=min(10.0, self.settings.ack_timeout_s))
            self._clients[partner] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._partner_loop(p, e, stop)) for p, e in self.targets().items()]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
            await self.close()
            with contextlib.suppress(Exception):
                await self.release_leases()

    async def _partner_loop(self, partner: str, endpoint: Endpoint, stop: asyncio.Event) -> None:
        pause = self.settings.poll_s
        while not stop.is_set():
            try:
                if not await self._lease(partner):
                    await _wait(stop, self.settings.lease_s / 3)
                    continue
                waited = await self.step(partner, endpoint)
                pause = self.settings.poll_s
                if waited > 0:
                    await _wait(stop, min(waited, self.settings.poll_s * 4))
            except Exception as exc:
                log.warning("hl7v2 sender for %s: %s; retrying in %.1fs", partner, type(exc).__name__, pause)
                await _wait(stop, pause)
                pause = min(10.0, pause * 2)

    async def deliver_all(self, partner: str | None = None, *, timeout_s: float = 30.0) -> int:
        """Send until nothing is due (tests, the demo, ``cgt-hub messages replay --send``).

        Like the running sender, it sends to a partner only while it holds that partner's lease:
        next to a serving hub, the hub's sender delivers and this skips the partner (listed in
        ``self.busy``), so one message is never in flight from two processes at once."""
        targets = self.targets()
        deadline = time.monotonic() + timeout_s
        delivered_before = self.delivered
        self.busy = []
        for pid, endpoint in targets.items():
            if partner is not None and pid != partner:
                continue
            while time.monotonic() < deadline:
                if not await self._lease(pid):
                    self.busy.append(pid)
                    break
                waited = await self.step(pid, endpoint)
                if waited < 0:
                    break
                if waited > 0:
                    await asyncio.sleep(min(waited, max(0.0, deadline - time.monotonic())))
        return self.delivered - delivered_before

    async def step(self, partner: str, endpoint: Endpoint) -> float:
        """Handle the partner's first due message. Returns -1 if nothing is pending, the seconds
        to wait if the head of the queue is in backoff, 0 after an attempt."""
        due = await asyncio.to_thread(self._head, partner)
        if due is None:
            return -1.0
        wait = (due.next_attempt_at - datetime.now(due.next_attempt_at.tzinfo)).total_seconds()
        if wait > 0:
            return wait
        payload = due.payload
        if payload is None:
            try:
                payload = await asyncio.to_thread(build, due.snapshot)
            except BuildError as exc:
                await self.store.run_async(self._record(due, "build-error", None, str(exc), 0, final=True))
                return 0.0
            await self.store.run_async(_save_payload(due.id, payload), actor=f"hl7v2-out:{partner}")
        started = time.perf_counter()
        try:
            ack = await self._client(partner, endpoint).send(
                payload, due.control_id, timeout_s=self.settings.ack_timeout_s
            )
        except DeliveryError as exc:
            elapsed = int((time.perf_counter() - started) * 1000)
            recorded = await self.store.run_async(
                self._record(due, exc.outcome, None, exc.detail, elapsed), actor=f"hl7v2-out:{partner}"
            )
            _log_failed_attempt(partner, due, f"{exc.outcome} ({exc.detail})", recorded)
            return 0.0
        elapsed = int((time.perf_counter() - started) * 1000)
        code = ack_code_of(ack) or "bad-ack"
        final = code == "CR"
        recorded = await self.store.run_async(
            self._record(
                due, code, ack, None if code in ("AA", "CA") else f"acknowledged {code}", elapsed, final=final
            ),
            actor=f"hl7v2-out:{partner}",
        )
        if code not in ("AA", "CA"):
            _log_failed_attempt(partner, due, code, recorded)
        if code in ("AA", "CA"):
            self.delivered += 1
        return 0.0

    def _head(self, partner: str) -> Due | None:
        def read(session: Any) -> Due | None:
            row = session.execute(
                select(Hl7v2Outbound)
                .where(Hl7v2Outbound.partner == partner, Hl7v2Outbound.status == "pending")
                .order_by(Hl7v2Outbound.id)
                .limit(1)
            ).scalar_one_or_none()
            if row is None:
                return None
            return Due(
                row.id,
                row.control_id,
                row.message_type,
                canonical.loads(row.snapshot),
                row.payload,
                row.attempts,
                row.next_attempt_at,
                row.order_id,
            )

        return self.store.read(read)

    def _record(
        self, due: Due, outcome: str, ack: bytes | None, error: str | None, elapsed_ms: int, *, final: bool = False
    ) -> Callable[[Work], tuple[str, int, datetime] | None]:
        """The job that records one attempt; it returns (status, attempts, next attempt) for the log."""
        settings = self.settings

        def job(work: Work) -> tuple[str, int, datetime] | None:
            row = work.session.get(Hl7v2Outbound, due.id, with_for_update=True)
            if row is None or row.status != "pending":
                return None
            row.attempts += 1  # this round's count (a replay starts a new round)
            # the attempt's number over the message's whole life, replays included
            number = work.session.scalar(
                select(func.max(Hl7v2OutboundAttempt.attempt)).where(Hl7v2OutboundAttempt.outbound_id == row.id)
            )
            if ack is not None and row.attempts > 1:
                # The partner answers again: if it had been reported unreachable, say it is back.
                _partner_back(work, row, outcome, alerted=row.attempts > settings.max_attempts)
            work.session.add(
                Hl7v2OutboundAttempt(
                    outbound_id=row.id,
                    attempt=(number or 0) + 1,
                    started_at=work.now,
                    duration_ms=elapsed_ms,
                    outcome=outcome[:16],
                    ack=ack[:ACK_BYTES_KEPT] if ack else None,
                    error=(error or "")[:2000] or None,
                )
            )
            if outcome in ("AA", "CA"):
                row.status = "delivered"
                row.delivered_at = work.now
                row.ack_code = outcome
                row.last_error = None
                return (row.status, row.attempts, row.next_attempt_at)
            row.ack_code = outcome[:2] if outcome in ("AE", "AR", "CE", "CR") else row.ack_code
            row.last_error = (error or outcome)[:2000]
            if not final and outcome == UNREACHABLE and row.attempts >= settings.max_attempts:
                # The partner is not taking connections (an outage, a certificate it refuses): the
                # message is not at fault. Dead-lettering it would let the messages behind it
                # overtake it (an order's "held" before its "accepted"), and every message of a long
                # outage would die in turn. It keeps its place at the head and is tried every
                # backoff_max_s; the operator is told once, when it would have died.
                row.next_attempt_at = work.now + timedelta(seconds=settings.backoff(row.attempts))
                if row.attempts == settings.max_attempts:
                    work.emit(
                        EventType.ALERT_RAISED,
                        row.order_id or row.partner,
                        AlertRaised(
                            order_id=row.order_id,
                            severity="warning",
                            kind=UNREACHABLE_ALERT,
                            message=(
                                f"{row.partner} takes no connection to {row.endpoint}: {row.message_type} "
                                f"{row.control_id} (out:{row.id}) not sent after {row.attempts} attempt(s) "
                                f"({error or outcome}); retried every {settings.backoff_max_s:g} s, the "
                                "messages after it wait (order kept)"
                            ),
                        ),
                    )
                return (row.status, row.attempts, row.next_attempt_at)
            if final or row.attempts >= settings.max_attempts:
                row.status = "dead"
                work.audit(
                    "update",
                    "Hl7v2Outbound",
                    str(row.id),
                    old={"status": "pending"},
                    new={"status": "dead", "attempts": row.attempts, "outcome": outcome},
                    reason="outbound HL7 v2 message dead-lettered",
                )
                work.emit(
                    EventType.ALERT_RAISED,
                    row.order_id or row.partner,
                    AlertRaised(
                        order_id=row.order_id,
                        severity="warning",
                        kind="hl7v2.outbound-dead",
                        message=(
                            f"{row.message_type} {row.control_id} to {row.partner} not delivered after "
                            f"{row.attempts} attempt(s): {outcome}"
                        ),
                    ),
                )
            else:
                row.next_attempt_at = work.now + timedelta(seconds=settings.backoff(row.attempts))
            return (row.status, row.attempts, row.next_attempt_at)

        return job

    async def _lease(self, partner: str) -> bool:
        name = f"hl7v2-out:{partner}"[: leases.NAME_MAX]
        job = leases.take(name, self.holder, self.settings.lease_span_s)
        return bool(await self.store.run_async(job, actor="hl7v2-sender"))

    async def release_leases(self) -> None:
        await self.store.run_async(leases.release(self.holder), actor="hl7v2-sender")


def _partner_back(work: Work, row: Hl7v2Outbound, outcome: str, *, alerted: bool) -> None:
    """The partner answered (an ACK) after failed attempts. If it had been reported unreachable
    (this message raised the alert, or another one's alert is still open), the operator is told
    it is back — an info alert ``hl7v2.partner-reachable`` naming how long it took no connection
    and how many messages waited — and the open ``hl7v2.partner-unreachable`` alerts for it are
    acknowledged by the hub, so they neither stay open nor escalate. Called before this
    attempt is recorded."""
    from hub.alerts.service import AlertService
    from hub.db.models import Alert

    open_alerts = list(
        work.session.scalars(
            select(Alert).where(
                Alert.kind == UNREACHABLE_ALERT,
                Alert.acknowledged_at.is_(None),
                Alert.message.startswith(f"{row.partner} takes no connection ", autoescape=True),
            )
        )
    )
    if not alerted and not open_alerts:
        return
    attempt, outbound = Hl7v2OutboundAttempt, Hl7v2Outbound
    of_partner = select(func.max(attempt.started_at)).join(outbound, outbound.id == attempt.outbound_id)
    last_answered = work.session.scalar(
        of_partner.where(outbound.partner == row.partner, attempt.outcome != UNREACHABLE)
    )
    first_refused = select(func.min(attempt.started_at)).join(outbound, outbound.id == attempt.outbound_id)
    first_refused = first_refused.where(outbound.partner == row.partner, attempt.outcome == UNREACHABLE)
    if last_answered is not None:
        first_refused = first_refused.where(attempt.started_at > last_answered)
    since = work.session.scalar(first_refused) or min((a.raised_at for a in open_alerts), default=None)
    waited = work.session.scalar(
        select(func.count()).where(outbound.partner == row.partner, outbound.status == "pending")
    )
    span = f"for {_duration((work.now - since).total_seconds())} (since {since:%Y-%m-%d %H:%M:%S}Z)" if since else ""
    work.emit(
        EventType.ALERT_RAISED,
        row.order_id or row.partner,
        AlertRaised(
            order_id=row.order_id,
            severity="info",
            kind=REACHABLE_ALERT,
            message=(
                f"{row.partner} answers again on {row.endpoint} ({outcome} to {row.message_type} {row.control_id}, "
                f"out:{row.id}) after taking no connection {span}; {waited} message(s) waited, out:{row.id} first"
            ),
        ),
    )
    for alert in open_alerts:
        AlertService(work).acknowledge(
            alert.id, HUB_ACKNOWLEDGER, f"{row.partner} answers again ({outcome} to out:{row.id}); resolved by the hub"
        )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"


def _save_payload(outbound_id: int, payload: bytes) -> Callable[[Work], None]:
    def job(work: Work) -> None:
        row = work.session.get(Hl7v2Outbound, outbound_id, with_for_update=True)
        if row is not None and row.payload is None:
            row.payload = payload

    return job


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))


def supported_message_types() -> tuple[str, ...]:
    return SUPPORTED
