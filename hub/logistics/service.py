"""Decisions about shipment legs: booking, courier events, custody at pickup and delivery, and the
stage moves a courier event asks for.

**Courier events and identity checkpoints.** A courier's word is evidence of *custody and
transport*, never of *identity*. So:

* "picked up" records the custody handoff origin site → courier and "delivered" courier →
  destination site (the separate custody trail), and moves the shipment leg;
* each of them then *proposes* the journey stage the product's leg names (``departs`` at pickup,
  ``arrives`` at delivery) through :meth:`OrderService.advance`, with all its guards. A pickup does
  not skip the courier-handoff identity verification the stage needs: if the verification is
  missing the stage stays where it is, the proposal is kept on the shipment (``pending_stage``), an
  alert says what is missing, and the proposal is tried again as soon as an identity verification,
  a stage change or a hold release happens on that order (``hub/logistics/tasks.py``);
* a courier event never creates an identity verification and never releases a hold.

Events can arrive late, repeated or out of order: each (shipment, courier code, time) is recorded
once, by the time the courier sent (a courier clock running ahead is clamped to ours only for the
custody and stage dates); a shipment's status never moves backwards (a late "in transit" after
"delivered" is recorded and changes nothing). An "exception" is not progress: the next event is
judged against the furthest status reached before it, so a pickup after "pickup delayed" still
records the custody handoff and proposes the stage.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from hub.db.models import TherapyOrder
from hub.db.models_logistics import OutboundWork, Shipment, ShipmentEvent
from hub.db.uow import Work
from hub.errors import GuardFailed, HubError, Issue, NotFound, ValidationFailed
from hub.events import AlertRaised, EventType, ShipmentBookingRequested, ShipmentStatusChanged
from hub.fhirstore.repository import ResourceRepository
from hub.identity.service import IdentityService
from hub.ids import uuid7
from hub.logistics import fhir
from hub.logistics.policy import Policy
from hub.logistics.ports import BookingResult
from hub.logistics.repository import LogisticsRepository
from hub.logistics.schemas import (
    BookShipment,
    CourierEvent,
    RecordReadings,
    RegisterShipment,
    ShipmentEventKind,
    ShipmentView,
)
from hub.orders.fhir import organization, organization_id, task_id
from hub.orders.repository import OrderRepository
from hub.orders.schemas import Advance, RecordHandoff
from hub.orders.service import OrderService
from hub.partners.loader import PartnerDirectory
from hub.products.registry import get_product
from hub.products.schemas import Leg, Product

# How far along a leg each status is; a status never moves to a lower rank.
RANK = {
    "planned": 0,
    "booking": 0,
    "booked": 1,
    "picked-up": 2,
    "in-transit": 3,
    "customs-hold": 3,
    "exception": 3,
    "out-for-delivery": 4,
    "delivered": 5,
    "failed": 6,
    "cancelled": 6,
}
STATUS_OF = {
    ShipmentEventKind.booked: "booked",
    ShipmentEventKind.picked_up: "picked-up",
    ShipmentEventKind.in_transit: "in-transit",
    ShipmentEventKind.customs_hold: "customs-hold",
    ShipmentEventKind.out_for_delivery: "out-for-delivery",
    ShipmentEventKind.delivered: "delivered",
}
# Where the material is before and after a leg: the site role of the stage before ``departs``
# and the site role of ``arrives``.
MATERIAL = {"manufacturing": "apheresis", "treatment": "product"}


class UnknownShipment(HubError):
    """A courier event for a tracking number the hub has no shipment for."""

    def __init__(self, courier: str, tracking_number: str) -> None:
        super().__init__(
            f"courier {courier} sent an event for tracking number {tracking_number}, which no shipment has",
            [Issue("unknown tracking number", "tracking_number")],
            status=422,
            fhir_code="not-found",
            hl7_code="204",
        )


def raise_alert(work: Work, order_id: str | None, severity: str, kind: str, message: str) -> None:
    """Alerts are events on the bus; hub/alerts records them. Messages carry ids and codes only."""
    work.emit(
        EventType.ALERT_RAISED,
        order_id or kind,
        AlertRaised(order_id=order_id, severity=severity, kind=kind, message=message[:2000]),
    )


def view(s: Shipment) -> ShipmentView:
    return ShipmentView(
        id=s.id,
        order_id=s.order_id,
        leg=s.leg_code,
        courier=s.courier,
        origin=s.origin,
        destination=s.destination,
        status=s.status,
        tracking_number=s.tracking_number,
        eta=s.eta,
        picked_up_at=s.picked_up_at,
        delivered_at=s.delivered_at,
        pending_stage=s.pending_stage,
        customs_partner=s.customs_partner,
        task_id=s.task_id,
    )


def leg_of(product: Product, code: str) -> Leg:
    for leg in product.legs:
        if leg.code == code:
            return leg
    raise ValidationFailed(
        f"{product.code} has no leg {code!r}",
        [Issue(f"legs: {', '.join(leg.code for leg in product.legs)}", "leg")],
    )


@dataclass
class ApplyOutcome:
    shipment_id: str | None
    outcome: str
    stage: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ShipmentService:
    work: Work
    partners: PartnerDirectory
    policy: Policy = field(default_factory=Policy)

    @property
    def repo(self) -> LogisticsRepository:
        return LogisticsRepository.from_session(self.work.session)

    @property
    def orders(self) -> OrderRepository:
        return OrderRepository.from_session(self.work.session)

    @property
    def resources(self) -> ResourceRepository:
        return ResourceRepository.for_work(self.work)

    # ------------------------------------------------------------------ book / register
    def book(self, cmd: BookShipment) -> ShipmentView:
        """Plan the leg and owe the courier a booking (performed outside this transaction by the
        outbound dispatcher, with an idempotency key). Booking the same leg twice returns the first."""
        order = self.orders.get(cmd.order_id, for_update=True)
        product = get_product(order.product_code)
        leg = leg_of(product, cmd.leg) if cmd.leg else self._next_leg(order, product)
        existing = self.repo.open_shipment(order.id, leg.code)
        if existing is not None:
            return view(existing)
        shipment = self._new_shipment(order, product, leg, cmd.courier, cmd.customs_partner, status="booking")
        shipment.pickup_after = cmd.pickup_after  # sent to the courier by the dispatcher
        key = shipment.idempotency_key
        self.repo.add(
            OutboundWork(
                id=uuid7(),
                kind="booking",
                partner=shipment.courier,
                subject_id=shipment.id,
                idempotency_key=key,
                status="pending",
                attempts=0,
                next_attempt_at=self.work.now,
                created_at=self.work.now,
                updated_at=self.work.now,
            )
        )
        self.work.emit(
            EventType.SHIPMENT_BOOKING_REQUESTED,
            order.id,
            ShipmentBookingRequested(
                order_id=order.id, shipment_id=shipment.id, courier=shipment.courier, leg=leg.code
            ),
        )
        if cmd.pickup_after is not None:
            self.work.audit("update", "Shipment", shipment.id, new={"pickup_after": cmd.pickup_after.isoformat()})
        return view(shipment)

    def register(self, cmd: RegisterShipment) -> ShipmentView:
        """A leg booked outside the hub, known by its tracking number."""
        order = self.orders.get(cmd.order_id, for_update=True)
        product = get_product(order.product_code)
        leg = leg_of(product, cmd.leg)
        existing = self.repo.open_shipment(order.id, leg.code)
        if existing is not None:
            if existing.tracking_number == cmd.tracking_number and existing.courier == cmd.courier:
                return view(existing)
            raise GuardFailed(f"leg {leg.code} of order {order.id} already has shipment {existing.id}")
        if self.repo.by_tracking(cmd.courier, cmd.tracking_number) is not None:
            raise GuardFailed(f"tracking number {cmd.tracking_number} of {cmd.courier} is already used")
        shipment = self._new_shipment(order, product, leg, cmd.courier, cmd.customs_partner, status="booked")
        shipment.tracking_number = cmd.tracking_number
        shipment.eta = cmd.eta
        self._write_task(order, shipment, leg, courier_code=None)
        self._status_event(order, shipment, "registered")
        self._check_eta(order, shipment)
        return view(shipment)

    def _next_leg(self, order: TherapyOrder, product: Product) -> Leg:
        here = product.index(order.stage)
        for leg in product.legs:
            if product.index(leg.departs) > here:
                return leg
        raise GuardFailed(f"order {order.id} at {order.stage} has no leg ahead of it")

    def _site(self, order: TherapyOrder, product: Product, stage_code: str, before: bool) -> str:
        index = product.index(stage_code) - (1 if before else 0)
        role = product.stages[index].site_role
        for partner_id, r in self.orders.participants(order.id):
            if r == role:
                return partner_id
        raise GuardFailed(f"order {order.id} has no {role} site for stage {product.stages[index].code}")

    def _courier(self, order: TherapyOrder, courier: str | None) -> str:
        if courier is None:
            couriers = [p for p, r in self.orders.participants(order.id) if r == "courier"]
            if not couriers:
                raise ValidationFailed(
                    f"order {order.id} names no courier; give one", [Issue("no courier participant", "courier")]
                )
            courier = couriers[0]
        profile = self.partners.get(courier)
        if profile is None or not profile.can_play("courier"):
            raise ValidationFailed(f"{courier!r} is not a courier partner", [Issue("not a courier", "courier")])
        return courier

    def _new_shipment(
        self,
        order: TherapyOrder,
        product: Product,
        leg: Leg,
        courier: str | None,
        customs_partner: str | None,
        *,
        status: str,
    ) -> Shipment:
        if order.status in ("revoked", "completed"):
            raise GuardFailed(f"order {order.id} is {order.status}; nothing to ship")
        courier_id = self._courier(order, courier)
        origin = self._site(order, product, leg.departs, before=True)
        destination = self._site(order, product, leg.arrives, before=False)
        if customs_partner is not None:
            profile = self.partners.get(customs_partner)
            if profile is None or not profile.can_play("customs"):
                raise ValidationFailed(
                    f"{customs_partner!r} is not a customs partner", [Issue("not a customs authority", "customs")]
                )
        elif (
            self._country(origin) and self._country(destination) and self._country(origin) != self._country(destination)
        ):
            raise ValidationFailed(
                f"leg {leg.code} crosses a border ({self._country(origin)} → {self._country(destination)}): "
                "name the customs partner",
                [Issue("customs partner missing for an international leg", "customs_partner")],
            )
        now = self.work.now
        shipment_id = uuid7()
        shipment = Shipment(
            id=shipment_id,
            order_id=order.id,
            leg_code=leg.code,
            material=MATERIAL.get(product.stage(leg.arrives).site_role, "product"),
            courier=courier_id,
            origin=origin,
            destination=destination,
            status=status,
            idempotency_key=uuid.uuid4().hex,
            customs_partner=customs_partner,
            task_id=f"{order.id}-{leg.code}"[:64],
            created_at=now,
            updated_at=now,
        )
        self.repo.add(shipment)
        for pid in (courier_id, origin, destination):
            self._ensure_site(pid)
        self._write_task(order, shipment, leg, courier_code=None, create=True)
        self.work.audit(
            "create",
            "Shipment",
            shipment_id,
            reason=f"shipment leg {leg.code}",
            new={
                "order": order.id,
                "leg": leg.code,
                "courier": courier_id,
                "origin": origin,
                "destination": destination,
                "status": status,
                "customs": customs_partner,
            },
        )
        if customs_partner is not None:
            from hub.logistics.customs import CustomsService

            CustomsService(self.work, self.partners, self.policy).open_declaration(shipment)
        return shipment

    def _country(self, partner_id: str) -> str | None:
        profile = self.partners.get(partner_id)
        return profile.identifiers.get("country") if profile else None

    def _ensure_site(self, partner_id: str) -> None:
        profile = self.partners.get(partner_id)
        name = profile.name if profile else partner_id
        present_org = self.resources.existing_ids("Organization", [organization_id(partner_id)])
        if not present_org:
            self.resources.create(
                self.work, organization(partner_id, name), id=organization_id(partner_id), reason="logistics site"
            )
        if not self.resources.existing_ids("Location", [fhir.location_id(partner_id)]):
            self.resources.create(
                self.work, fhir.location(partner_id, name), id=fhir.location_id(partner_id), reason="logistics site"
            )

    def _write_task(
        self,
        order: TherapyOrder,
        s: Shipment,
        leg: Leg,
        *,
        courier_code: str | None,
        create: bool = False,
        location: str | None = None,
        signed_by: str | None = None,
    ) -> None:
        product = get_product(order.product_code)
        latest = None
        must = product.index(product.viability.must_reach)
        if order.viability_deadline is not None and product.index(leg.arrives) <= must:
            latest = order.viability_deadline - self.policy.receipt_margin
        task = fhir.transport_task(
            task_id=s.task_id,
            shipment_id=s.id,
            order_id=order.id,
            coi=order.coi,
            patient_id=order.patient_id,
            part_of_task=task_id(order.id, product.index(leg.departs)),
            leg=leg,
            courier=s.courier,
            origin=s.origin,
            destination=s.destination,
            status=s.status,
            authored=s.created_at,
            modified=self.work.now,
            tracking_number=s.tracking_number,
            courier_code=courier_code,
            eta=s.eta,
            picked_up_at=s.picked_up_at,
            delivered_at=s.delivered_at,
            current_location=location,
            latest_arrival=latest,
            signed_by=signed_by,
        )
        if create:
            self.resources.create(self.work, task, id=s.task_id, reason=f"shipment leg {leg.code} planned")
        else:
            self.resources.update(self.work, task, reason=f"shipment {s.status}")

    def _status_event(self, order: TherapyOrder, s: Shipment, event: str) -> None:
        self.work.emit(
            EventType.SHIPMENT_STATUS_CHANGED,
            order.id,
            ShipmentStatusChanged(
                order_id=order.id,
                shipment_id=s.id,
                courier=s.courier,
                leg=s.leg_code,
                status=s.status,
                event=event,
                tracking_number=s.tracking_number,
                eta=s.eta,
            ),
        )

    # ------------------------------------------------------------------ booking outcome
    def booking_confirmed(self, shipment_id: str, result: BookingResult) -> ShipmentView:
        s = self.repo.shipment(shipment_id, for_update=True)
        order = self.orders.get(s.order_id, for_update=True)
        if s.status not in ("booking", "planned"):
            # A late answer to a booking already settled. The same booking again changes nothing;
            # another one is a real booking at the courier the leg does not know: a person must
            # register it (or cancel it with the courier), never book once more.
            if result.tracking_number != s.tracking_number:
                raise_alert(
                    self.work,
                    order.id,
                    "critical",
                    "shipment.booking-unrecorded",
                    f"courier {s.courier} booked leg {s.leg_code} of order {order.id} (booking "
                    f"{result.booking_reference}, tracking {result.tracking_number}) after shipment {s.id} was "
                    f"settled as {s.status}: the courier holds this booking. Register the shipment with tracking "
                    f"number {result.tracking_number} instead of booking again, or cancel it with the courier",
                )
            return view(s)
        clash = self.repo.by_tracking(s.courier, result.tracking_number)
        if clash is not None and clash.id != s.id:
            raise GuardFailed(f"courier {s.courier} gave tracking number {result.tracking_number} twice")
        old = {"status": s.status}
        s.status = "booked"
        s.tracking_number = result.tracking_number
        s.booking_reference = result.booking_reference
        s.eta = result.eta
        s.updated_at = self.work.now
        self.work.session.flush()
        leg = leg_of(get_product(order.product_code), s.leg_code)
        self._write_task(order, s, leg, courier_code=None)
        self.work.audit(
            "update",
            "Shipment",
            s.id,
            old=old,
            new={"status": "booked", "tracking": result.tracking_number, "booking": result.booking_reference},
            reason="courier booking confirmed",
        )
        self._status_event(order, s, "booked")
        self._check_eta(order, s)
        return view(s)

    def booking_failed(self, shipment_id: str, reason: str) -> None:
        s = self.repo.shipment(shipment_id, for_update=True)
        if s.status not in ("booking", "planned"):
            return
        order = self.orders.get(s.order_id)
        s.status = "failed"
        s.updated_at = self.work.now
        self.work.session.flush()
        self._write_task(order, s, leg_of(get_product(order.product_code), s.leg_code), courier_code=None)
        self.work.audit("update", "Shipment", s.id, old={"status": "booking"}, new={"status": "failed"}, reason=reason)
        self._status_event(order, s, "booking-failed")
        raise_alert(
            self.work,
            order.id,
            "critical",
            "shipment.booking-failed",
            f"courier {s.courier} booking for leg {s.leg_code} of order {order.id} failed: {reason}",
        )

    # ------------------------------------------------------------------ courier events
    def apply(self, event: CourierEvent) -> ApplyOutcome:
        s = self.repo.by_tracking(event.courier, event.tracking_number, for_update=True)
        if s is None:
            raise UnknownShipment(event.courier, event.tracking_number)
        order = self.orders.get(s.order_id, for_update=True)
        product = get_product(order.product_code)
        leg = leg_of(product, s.leg_code)
        # The event is known by the courier's own time: clamping first would give a resent event
        # from a courier whose clock runs ahead a new time on every delivery, and record it again.
        if self.repo.event_seen(s.id, event.courier_code, event.occurred_at):
            return ApplyOutcome(s.id, "duplicate event: already recorded")
        outcome = ApplyOutcome(s.id, "recorded")
        at = min(event.occurred_at, self.work.now)  # a courier clock ahead of ours is not the future
        if at < event.occurred_at:
            outcome.notes.append("courier time ahead of the hub's: custody and stage dated at receipt")
        eta_changed = event.eta is not None and event.eta != s.eta
        if eta_changed:
            s.eta = event.eta
        kind = event.kind
        if kind is None:
            outcome.outcome = "unknown courier code: recorded and alerted"
            raise_alert(
                self.work,
                order.id,
                "warning",
                "courier.unknown-code",
                f"courier {s.courier} sent code {event.courier_code!r} for shipment {s.id} (order {order.id}); "
                "it is not in the courier's mapping: recorded, not acted on",
            )
        elif kind is ShipmentEventKind.exception:
            s.status = "exception" if RANK[s.status] <= RANK["exception"] else s.status
            outcome.outcome = "exception alerted"
            raise_alert(
                self.work,
                order.id,
                "critical",
                "shipment.exception",
                f"courier {s.courier} reports an exception ({event.courier_code}) on shipment {s.id} "
                f"leg {s.leg_code} of order {order.id}",
            )
        else:
            target = STATUS_OF[kind]
            # An exception is not progress: a pickup after "exception" (e.g. pickup delayed, then
            # done) is compared with where the leg really was, or it would be swallowed.
            progress = self._progress(s)
            moved = not (
                RANK[target] < RANK[progress] or (target == s.status and kind is not ShipmentEventKind.customs_hold)
            )
            if moved:
                s.status = target
                outcome.outcome = f"status {target}"
            else:
                outcome.outcome = f"{kind.value} recorded; status stays {s.status}"
            # Custody moved when the courier says it picked up, whatever the status shows.
            if s.picked_up_at is None and (
                kind is ShipmentEventKind.picked_up or (moved and RANK[target] >= RANK["picked-up"])
            ):
                self._picked_up(order, s, at, event, outcome)
            if moved:
                if kind is ShipmentEventKind.delivered:
                    self._delivered(order, product, s, leg, at, event, outcome)
                if kind is ShipmentEventKind.customs_hold:
                    raise_alert(
                        self.work,
                        order.id,
                        "warning",
                        "shipment.customs-hold",
                        f"shipment {s.id} leg {s.leg_code} of order {order.id} is held by customs",
                    )
        s.updated_at = self.work.now
        self.repo.add(
            ShipmentEvent(
                id=uuid7(),
                shipment_id=s.id,
                order_id=order.id,
                inbox_message_id=event.inbox_message_id,
                courier_code=event.courier_code,
                canonical=kind.value if kind is not None else "unknown",
                occurred_at=event.occurred_at,  # the courier's word, as sent (see event_seen above)
                recorded_at=self.work.now,
                location=event.location,
                outcome=outcome.outcome + ("; " + "; ".join(outcome.notes) if outcome.notes else ""),
            )
        )
        self._write_task(order, s, leg, courier_code=event.courier_code, location=event.location, signed_by=None)
        self.work.audit(
            "update",
            "Shipment",
            s.id,
            reason=f"courier event {event.courier_code}",
            new={
                "status": s.status,
                "event": kind.value if kind else "unknown",
                "eta": s.eta.isoformat() if s.eta else None,
            },
        )
        self._status_event(order, s, kind.value if kind else "unknown")
        if event.readings:
            from hub.logistics.temperature import TemperatureService

            TemperatureService(self.work, self.partners).record(
                RecordReadings(
                    courier=event.courier,
                    tracking_number=event.tracking_number,
                    logger=event.logger or f"{event.courier}-logger",
                    readings=event.readings,
                )
            )
        if eta_changed or kind is ShipmentEventKind.picked_up:
            self._check_eta(order, s)
        return outcome

    def _progress(self, s: Shipment) -> str:
        """How far the leg has got: its status, or under "exception" the furthest status the courier
        reported (an exception says something went wrong, not where the material is)."""
        if s.status != "exception":
            return s.status
        reached = [c for c in self.repo.event_kinds(s.id) if c in RANK and c != "exception"]
        return max([*reached, "booked"], key=lambda c: RANK[c])

    def _picked_up(
        self, order: TherapyOrder, s: Shipment, at: datetime, event: CourierEvent, out: ApplyOutcome
    ) -> None:
        if s.picked_up_at is not None:
            return
        s.picked_up_at = at
        IdentityService(self.work, self.partners).handoff(
            RecordHandoff(
                order_id=order.id,
                material=s.material,
                from_party=s.origin,
                to_party=s.courier,
                at=at,
                location=event.location,
                reference=s.tracking_number,
            )
        )
        out.notes.append(f"custody {s.origin} → {s.courier}")
        leg = leg_of(get_product(order.product_code), s.leg_code)
        self._propose(order, s, leg.departs, at, out)

    def _delivered(
        self,
        order: TherapyOrder,
        product: Product,
        s: Shipment,
        leg: Leg,
        at: datetime,
        event: CourierEvent,
        out: ApplyOutcome,
    ) -> None:
        s.delivered_at = at
        IdentityService(self.work, self.partners).handoff(
            RecordHandoff(
                order_id=order.id,
                material=s.material,
                from_party=s.courier,
                to_party=s.destination,
                at=at,
                location=event.location,
                reference=((s.tracking_number or "") + (f" signed by {event.signed_by}" if event.signed_by else ""))[
                    :128
                ],
            )
        )
        out.notes.append(f"custody {s.courier} → {s.destination}")
        self._propose(order, s, leg.arrives, at, out)

    # ------------------------------------------------------------------ stage proposals
    def _propose(self, order: TherapyOrder, s: Shipment, stage: str, at: datetime | None, out: ApplyOutcome) -> None:
        product = get_product(order.product_code)
        if product.index(order.stage) >= product.index(stage):
            out.notes.append(f"order already at {order.stage}")
            if s.pending_stage == stage:
                s.pending_stage = None
            return
        failure = self._try_advance(order, stage, at)
        if failure is None:
            out.stage = stage
            out.notes.append(f"stage → {stage}")
            if s.pending_stage == stage:
                s.pending_stage = None
                s.pending_at = None
            return
        s.pending_stage = stage
        s.pending_at = at or self.work.now
        out.notes.append(f"stage {stage} pending: {failure}")
        raise_alert(
            self.work,
            order.id,
            "warning",
            "shipment.stage-pending",
            f"courier event on shipment {s.id} asks for stage {stage} of order {order.id}, "
            f"which is refused for now: {failure}",
        )

    def _try_advance(self, order: TherapyOrder, stage: str, at: datetime | None) -> str | None:
        """Advance through the core's command (savepoint: a refusal writes nothing). None on success."""
        product = get_product(order.product_code)
        nxt = product.next_stage(order.stage)
        if nxt is None or nxt.code != stage:
            return f"the order is at {order.stage}; {stage} is not the next stage"
        occurred = at if at is not None and at <= self.work.now else None
        try:
            with self.work.attempt():
                OrderService(self.work, self.partners).advance(
                    Advance(order_id=order.id, to_stage=stage, occurred_at=occurred, note="courier event")
                )
        except (GuardFailed, ValidationFailed, NotFound) as exc:
            return exc.message
        return None

    def retry_pending(self, order_id: str) -> list[str]:
        """Try the stage moves courier events asked for; called when the order's identity, stage or
        holds change. Returns the stages entered."""
        entered: list[str] = []
        try:
            order = self.orders.get(order_id, for_update=True)
        except NotFound:
            return entered
        product = get_product(order.product_code)
        for s in sorted(
            self.repo.pending_stage_shipments(order_id),
            key=lambda x: product.index(x.pending_stage or "order-accepted"),
        ):
            stage = s.pending_stage
            assert stage is not None
            if product.index(order.stage) >= product.index(stage):
                s.pending_stage = None
                s.pending_at = None
                continue
            if order.status != "active":
                continue
            if self._try_advance(order, stage, None) is None:
                entered.append(stage)
                s.pending_stage = None
                s.pending_at = None
                self.work.audit(
                    "update",
                    "Shipment",
                    s.id,
                    new={"pending_stage": None, "entered": stage},
                    reason="pending stage entered",
                )
        self.work.session.flush()
        return entered

    def _check_eta(self, order: TherapyOrder, s: Shipment) -> None:
        from hub.logistics.viability import ViabilityService

        ViabilityService(self.work, self.policy).check_shipment(order, s)

    # ------------------------------------------------------------------ reads
    def shipments(self, order_id: str) -> list[ShipmentView]:
        return [view(s) for s in self.repo.shipments(order_id)]


def declaration_reference(shipment: Shipment) -> str:
    return ("CGT" + shipment.id.replace("-", "").upper())[:35]
