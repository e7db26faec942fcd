"""The viability clock and the patient's conditioning schedule.

The core starts the clock (``TherapyOrder.viability_started_at`` / ``viability_deadline``) when
the order enters the product's ``viability.starts_on`` stage (end of collection); the clock stops
when the order enters ``viability.must_reach``. While it runs:

* **Escalations** at each of the product's ``escalate_at`` fractions of the window (warning below
  0.9, critical from 0.9) and at the **breach** (critical), each raised once per order
  (``viability_alert``), by the periodic sweep (:meth:`ViabilityService.sweep`).
* **Prediction.** Whenever a leg's ETA is set or changes (booking, courier event), and on every
  sweep, the predicted arrival + the receipt margin (delivery → must_reach stage) is compared with
  the deadline; if it lands after it, a critical ``viability.predicted-breach`` alert goes out at
  once — typically hours before the breach. An ETA already in the past while the leg is not
  delivered counts as "now" (the shipment is late).
* **Conditioning.** The product leg to the treatment site must arrive ``site_margin`` before the
  planned infusion (conditioning start + ``infusion_after_conditioning`` unless given); an ETA that
  threatens it raises ``conditioning.threatened`` (critical), once per leg.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from hub.db.models import TherapyOrder
from hub.db.models_logistics import ConditioningSchedule, Shipment, ViabilityAlert
from hub.db.uow import Work
from hub.errors import GuardFailed, Issue, ValidationFailed
from hub.events import ConditioningScheduled, EventType, ViabilityEscalated
from hub.logistics.policy import Policy
from hub.logistics.repository import LogisticsRepository
from hub.logistics.schemas import ScheduleConditioning
from hub.logistics.service import leg_of, raise_alert
from hub.orders.repository import OrderRepository
from hub.products.registry import get_product


@dataclass(frozen=True)
class Countdown:
    started_at: datetime
    deadline: datetime
    stopped_at: datetime | None
    elapsed_fraction: float
    remaining_minutes: float
    predicted_arrival: datetime | None
    levels: tuple[str, ...]

    def describe(self) -> str:
        if self.stopped_at is not None:
            margin = (self.deadline - self.stopped_at).total_seconds() / 3600
            return f"clock stopped at {self.stopped_at:%Y-%m-%d %H:%M}Z, {margin:.1f} h before the deadline"
        if self.remaining_minutes <= 0:
            return f"BREACHED {-self.remaining_minutes / 60:.1f} h ago"
        text = f"{self.remaining_minutes / 60:.1f} h left ({self.elapsed_fraction:.0%} of the window used)"
        if self.predicted_arrival is not None:
            text += f", courier ETA {self.predicted_arrival:%Y-%m-%d %H:%M}Z"
        return text


def countdown(session_repo: LogisticsRepository, order: TherapyOrder, now: datetime) -> Countdown | None:
    if order.viability_started_at is None or order.viability_deadline is None:
        return None
    product = get_product(order.product_code)
    stopped: datetime | None = None
    if product.index(order.stage) >= product.index(product.viability.must_reach):
        for t in OrderRepository.from_session(session_repo.session).transitions(order.id):
            if t.to_stage == product.viability.must_reach:
                stopped = t.at
    at = stopped or now
    window = (order.viability_deadline - order.viability_started_at).total_seconds()
    fraction = (at - order.viability_started_at).total_seconds() / window if window > 0 else 1.0
    eta = None
    must = product.index(product.viability.must_reach)
    for s in session_repo.shipments(order.id):
        leg = leg_of(product, s.leg_code)
        if product.index(leg.arrives) <= must and s.delivered_at is None and s.eta is not None:
            eta = s.eta
    return Countdown(
        order.viability_started_at,
        order.viability_deadline,
        stopped,
        fraction,
        (order.viability_deadline - at).total_seconds() / 60,
        eta,
        tuple(sorted(session_repo.viability_levels(order.id))),
    )


@dataclass
class ViabilityService:
    work: Work
    policy: Policy = field(default_factory=Policy)

    @property
    def repo(self) -> LogisticsRepository:
        return LogisticsRepository.from_session(self.work.session)

    def _raise_once(self, order: TherapyOrder, level: str, severity: str, kind: str, message: str) -> bool:
        if level in self.repo.viability_levels(order.id):
            return False
        self.work.session.add(ViabilityAlert(order_id=order.id, level=level, raised_at=self.work.now, detail=message))
        self.work.session.flush()
        if order.viability_deadline is not None:
            self.work.emit(
                EventType.VIABILITY_ESCALATED,
                order.id,
                ViabilityEscalated(
                    order_id=order.id,
                    coi=order.coi,
                    level=level,
                    deadline=order.viability_deadline,
                    remaining_minutes=round((order.viability_deadline - self.work.now).total_seconds() / 60, 1),
                ),
            )
        raise_alert(self.work, order.id, severity, kind, message)
        return True

    def sweep(self) -> int:
        """Raise the escalations that are due for every running clock; re-predict late legs."""
        raised = 0
        for order in self.repo.clocks_running():
            product = get_product(order.product_code)
            if product.index(order.stage) >= product.index(product.viability.must_reach):
                continue
            raised += self.check_order(order)
            for s in self.repo.shipments(order.id):
                if s.delivered_at is None and s.status not in ("failed", "cancelled"):
                    raised += self.check_shipment(order, s)
        return raised

    def check_order(self, order: TherapyOrder) -> int:
        assert order.viability_started_at is not None
        assert order.viability_deadline is not None
        product = get_product(order.product_code)
        now = self.work.now
        window = (order.viability_deadline - order.viability_started_at).total_seconds()
        fraction = (now - order.viability_started_at).total_seconds() / window
        raised = 0
        left_h = (order.viability_deadline - now).total_seconds() / 3600
        for mark in sorted(product.viability.escalate_at):
            if fraction >= mark:
                severity = "critical" if mark >= 0.9 else "warning"
                raised += self._raise_once(
                    order,
                    f"{mark:g}",
                    severity,
                    "viability.escalation",
                    f"order {order.id} (CoI {order.coi}): {mark:.0%} of the {product.viability.window_hours:g} h "
                    f"viability window used, {left_h:.1f} h left to reach {product.viability.must_reach}",
                )
        if now > order.viability_deadline:
            raised += self._raise_once(
                order,
                "breach",
                "critical",
                "viability.breach",
                f"order {order.id} (CoI {order.coi}): viability window closed at "
                f"{order.viability_deadline:%Y-%m-%d %H:%M}Z before {product.viability.must_reach}",
            )
        return raised

    def check_shipment(self, order: TherapyOrder, s: Shipment) -> int:
        """Compare the leg's predicted arrival with the viability deadline and the conditioning plan."""
        if s.eta is None or s.delivered_at is not None:
            return 0
        product = get_product(order.product_code)
        leg = leg_of(product, s.leg_code)
        now = self.work.now
        predicted = max(s.eta, now)
        raised = 0
        must = product.index(product.viability.must_reach)
        clock_running = (
            order.viability_deadline is not None
            and product.index(order.stage) < must
            and product.index(leg.arrives) <= must
        )
        if clock_running:
            assert order.viability_deadline is not None
            ready = predicted + self.policy.receipt_margin
            if ready > order.viability_deadline:
                late_h = (ready - order.viability_deadline).total_seconds() / 3600
                raised += self._raise_once(
                    order,
                    f"predicted-breach:{leg.code}",
                    "critical",
                    "viability.predicted-breach",
                    f"order {order.id} (CoI {order.coi}): shipment {s.id} ETA {predicted:%Y-%m-%d %H:%M}Z + "
                    f"{self.policy.receipt_margin.total_seconds() / 3600:g} h receipt margin misses the viability "
                    f"deadline {order.viability_deadline:%Y-%m-%d %H:%M}Z by {late_h:.1f} h",
                )
        schedule = self.repo.conditioning(order.id)
        if schedule is not None and product.stage(leg.arrives).site_role == "treatment":
            needed = predicted + self.policy.site_margin
            if needed > schedule.planned_infusion_at:
                raised += self._raise_once(
                    order,
                    f"conditioning:{leg.code}",
                    "critical",
                    "conditioning.threatened",
                    f"order {order.id} (CoI {order.coi}): product ETA {predicted:%Y-%m-%d %H:%M}Z leaves less than "
                    f"{self.policy.site_margin.total_seconds() / 3600:g} h before the planned infusion "
                    f"{schedule.planned_infusion_at:%Y-%m-%d %H:%M}Z (conditioning started "
                    f"{schedule.conditioning_start:%Y-%m-%d %H:%M}Z)",
                )
        return raised

    def schedule_conditioning(self, cmd: ScheduleConditioning) -> ConditioningSchedule:
        order = OrderRepository.from_session(self.work.session).get(cmd.order_id, for_update=True)
        if order.status in ("revoked", "completed"):
            raise GuardFailed(f"order {order.id} is {order.status}")
        infusion = cmd.planned_infusion_at or cmd.conditioning_start + self.policy.infusion_after_conditioning
        if infusion < cmd.conditioning_start:
            raise ValidationFailed(
                "the planned infusion is before conditioning starts",
                [Issue("infusion before conditioning", "planned_infusion_at")],
            )
        return self.store_conditioning(order, cmd.conditioning_start, infusion)

    def store_conditioning(self, order: TherapyOrder, start: datetime, infusion: datetime) -> ConditioningSchedule:
        row = self.repo.conditioning(order.id)
        old = None
        if row is None:
            row = ConditioningSchedule(
                order_id=order.id, conditioning_start=start, planned_infusion_at=infusion, updated_at=self.work.now
            )
            self.work.session.add(row)
        else:
            old = {"start": row.conditioning_start.isoformat(), "infusion": row.planned_infusion_at.isoformat()}
            row.conditioning_start = start
            row.planned_infusion_at = infusion
            row.updated_at = self.work.now
        self.work.session.flush()
        self.work.audit(
            "create" if old is None else "update",
            "ConditioningSchedule",
            order.id,
            old=old,
            new={"start": start.isoformat(), "infusion": infusion.isoformat()},
            reason="conditioning schedule",
        )
        self.work.emit(
            EventType.CONDITIONING_SCHEDULED,
            order.id,
            ConditioningScheduled(order_id=order.id, conditioning_start=start, planned_infusion_at=infusion),
        )
        for s in self.repo.shipments(order.id):
            self.check_shipment(order, s)
        return row


def conditioning_from_order(work: Work, order_id: str, start: datetime) -> None:
    """Keep ``PlaceOrder.conditioning_start`` (called by the core when an order is accepted)."""
    order = OrderRepository.from_session(work.session).get(order_id)
    ViabilityService(work).store_conditioning(order, start, start + Policy().infusion_after_conditioning)
