"""Cold chain: logger readings, excursion rules, alerts.

**Ranges** come from the product definition, per leg (``legs[].temperature``: ``min_c``,
``max_c``, ``tolerated_minutes``, ``ln2_min_percent``). A reading is out of range when it is warmer
than ``max_c``, colder than ``min_c`` or its liquid-nitrogen level is below ``ln2_min_percent``.

**Excursion rules.** The first out-of-range reading opens an *excursion* (kind: too-warm,
too-cold, ln2-low). It stays open while readings stay out of range, tracking its peak; the first
reading that measures its quantity in range closes it (a point without a temperature, or without
an LN2 level, says nothing about that quantity and is passed over). When an excursion has lasted
``tolerated_minutes`` (immediately when that is 0, e.g. cryogenic legs) it is *escalated*: a
critical alert, and the order is put on hold (kind ``temperature-excursion``) in the same
transaction, so only a signed QA decision lets the material go on. Its duration is judged at the
worst case: up to the reading that closes it (a logger reporting hourly cannot shorten it), and,
while no reading comes, up to now (the periodic sweep, :meth:`TemperatureService.escalate_overdue`).
A shorter excursion is recorded (Observation, event, warning alert) and does not escalate. A change
of kind closes one excursion and opens the next.

**What is a FHIR Observation.** Every reading is kept, append-only, in ``temperature_reading``
(one bulk insert per batch). A FHIR Observation per reading would cost a validation, a resource
version, search-index rows and an audit entry per reading, i.e. a few hundred readings per second
instead of thousands, for data nobody reads one by one. So the FHIR record holds what people and
partners need: **one Observation per received batch** (min / max / mean, count, out-of-range
count, lowest LN2 level, period, logger) and **one Observation per excursion** (kind, peak,
duration, escalated). The batch's audit entry (the Observation's) binds the readings by count and
period; the raw rows can be re-summarised at any time.

Readings older than the last one already seen for the shipment (late or replayed batches) are
stored and summarised, but do not move the running excursion state; an out-of-range late reading
raises a warning so a person looks at it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from hub.db.models import TherapyOrder
from hub.db.models_logistics import Shipment, TemperatureExcursion, TemperatureState
from hub.db.uow import Work
from hub.events import EventType, TemperatureExcursionEvent
from hub.fhirstore.repository import ResourceRepository
from hub.logistics import fhir
from hub.logistics.repository import LogisticsRepository
from hub.logistics.schemas import Reading, RecordReadings
from hub.logistics.service import UnknownShipment, leg_of, raise_alert
from hub.orders.repository import OrderRepository
from hub.orders.schemas import PlaceHold
from hub.orders.service import EXCURSION_HOLD, OrderService
from hub.partners.loader import PartnerDirectory
from hub.products.registry import get_product
from hub.products.schemas import TemperatureRange


def violations(rng: TemperatureRange, r: Reading) -> list[tuple[str, float, float]]:
    """(kind, value, limit) for each way the reading breaks the range (temperature first)."""
    found: list[tuple[str, float, float]] = []
    t = r.temperature_c
    if t is not None:
        if rng.max_c is not None and t > rng.max_c:
            found.append(("too-warm", t, rng.max_c))
        if rng.min_c is not None and t < rng.min_c:
            found.append(("too-cold", t, rng.min_c))
    if rng.ln2_min_percent is not None and r.ln2_percent is not None and r.ln2_percent < rng.ln2_min_percent:
        found.append(("ln2-low", r.ln2_percent, rng.ln2_min_percent))
    return found


def violation(rng: TemperatureRange, r: Reading) -> tuple[str, float, float] | None:
    """(kind, value, limit) when the reading breaks the range, else None."""
    found = violations(rng, r)
    return found[0] if found else None


def measures(kind: str, r: Reading) -> bool:
    """Whether the reading measures the quantity an excursion of this kind is about. Loggers post
    their temperature and their LN2 level as separate points (and sometimes empty ones): a point
    without a temperature says nothing about a warm excursion, so it must not end it."""
    return (r.ln2_percent if kind == "ln2-low" else r.temperature_c) is not None


@dataclass
class BatchResult:
    shipment_id: str
    stored: int
    out_of_range: int
    opened: list[str] = field(default_factory=list)
    escalated: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    observation_id: str | None = None


@dataclass
class TemperatureService:
    work: Work
    partners: PartnerDirectory

    @property
    def repo(self) -> LogisticsRepository:
        return LogisticsRepository.from_session(self.work.session)

    def record(self, cmd: RecordReadings) -> BatchResult:
        repo = self.repo
        s = repo.by_tracking(cmd.courier, cmd.tracking_number, for_update=True)
        if s is None:
            raise UnknownShipment(cmd.courier, cmd.tracking_number)
        order = OrderRepository.from_session(self.work.session).get(s.order_id)
        product = get_product(order.product_code)
        leg = leg_of(product, s.leg_code)
        rng = leg.temperature
        state = repo.temperature_state(s.id)
        readings = sorted(cmd.readings, key=lambda r: r.at)
        result = BatchResult(s.id, len(readings), 0)
        rows = []
        temps: list[float] = []
        ln2: list[float] = []
        open_exc = repo.excursion(state.excursion_id) if state.excursion_id else None
        for r in readings:
            found = violations(rng, r)
            v = found[0] if found else None
            rows.append(
                {
                    "shipment_id": s.id,
                    "logger": cmd.logger,
                    "at": r.at,
                    "temperature_c": r.temperature_c,
                    "ln2_percent": r.ln2_percent,
                    "in_range": v is None,
                }
            )
            if r.temperature_c is not None:
                temps.append(r.temperature_c)
            if r.ln2_percent is not None:
                ln2.append(r.ln2_percent)
            if v is not None:
                result.out_of_range += 1
            if state.last_at is not None and r.at <= state.last_at:
                if v is not None:
                    raise_alert(
                        self.work,
                        order.id,
                        "warning",
                        "temperature.late-reading",
                        f"a late out-of-range reading ({v[0]}) arrived for shipment {s.id} of order {order.id}",
                    )
                continue
            state.last_at = r.at
            if open_exc is not None:
                going_on = next((x for x in found if x[0] == open_exc.kind), None)
                if going_on is not None:
                    v = going_on
                elif measures(open_exc.kind, r):
                    self._close(order, s, open_exc, r, result)
                    open_exc = None
                    state.excursion_id = None
                else:
                    # Silent on the open excursion's quantity: it goes on. One excursion is
                    # followed at a time; another quantity's breach here is kept in the readings
                    # and the batch summary.
                    continue
            if v is not None:
                kind, value, limit = v
                if open_exc is None:
                    open_exc = TemperatureExcursion(
                        id=str(uuid.uuid4()),
                        shipment_id=s.id,
                        order_id=order.id,
                        kind=kind,
                        limit_value=limit,
                        started_at=r.at,
                        last_out_at=r.at,
                        peak=value,
                        readings=1,
                        escalated=False,
                    )
                    repo.add(open_exc)
                    state.excursion_id = open_exc.id
                    result.opened.append(open_exc.id)
                    self._event(order, s, open_exc, "opened")
                else:
                    open_exc.readings += 1
                    open_exc.last_out_at = r.at
                    open_exc.peak = max(open_exc.peak, value) if kind == "too-warm" else min(open_exc.peak, value)
                minutes = (r.at - open_exc.started_at).total_seconds() / 60
                if not open_exc.escalated and minutes >= rng.tolerated_minutes:
                    self._escalate(order, s, open_exc, minutes, "excursion lasted the tolerated time")
                    result.escalated.append(open_exc.id)
        repo.add_readings(rows)
        state.readings = (state.readings or 0) + len(rows)
        if temps:
            state.min_c = min(temps + ([state.min_c] if state.min_c is not None else []))
            state.max_c = max(temps + ([state.max_c] if state.max_c is not None else []))
        self.work.session.flush()
        obs = ResourceRepository.for_work(self.work).create(
            self.work,
            fhir.temperature_summary(
                order_id=order.id,
                patient_id=order.patient_id,
                task_id=s.task_id,
                logger=cmd.logger,
                leg=leg,
                start=readings[0].at,
                end=readings[-1].at,
                count=len(readings),
                out_of_range=result.out_of_range,
                min_c=min(temps) if temps else None,
                max_c=max(temps) if temps else None,
                mean_c=sum(temps) / len(temps) if temps else None,
                min_ln2=min(ln2) if ln2 else None,
            ),
            reason=f"{len(readings)} logger readings for shipment {s.id}",
        )
        result.observation_id = obs.id
        return result

    def escalate_overdue(self) -> int:
        """Escalate the open excursions that have lasted the tolerated time by now although no
        reading said so: a logger that stops reporting mid-excursion must not keep it tolerated.
        For a delivered leg the clock stops at delivery. Returns how many were escalated."""
        escalated = 0
        for candidate in self.repo.open_excursions():
            s = self.repo.shipment(candidate.shipment_id, for_update=True)
            exc = self.repo.excursion(candidate.id)
            self.work.session.refresh(exc)  # a batch may have closed or escalated it meanwhile
            if exc.ended_at is not None or exc.escalated:
                continue
            order = OrderRepository.from_session(self.work.session).get(s.order_id)
            rng = leg_of(get_product(order.product_code), s.leg_code).temperature
            until = min(self.work.now, s.delivered_at) if s.delivered_at is not None else self.work.now
            minutes = (until - exc.started_at).total_seconds() / 60
            if minutes >= rng.tolerated_minutes:
                silent = (self.work.now - exc.last_out_at).total_seconds() / 60
                why = f"no reading for {silent:.0f} min while out of range: taken to last until now"
                self._escalate(order, s, exc, minutes, why)
                escalated += 1
        return escalated

    def _event(self, order: TherapyOrder, s: Shipment, exc: TemperatureExcursion, state: str) -> None:
        minutes = ((exc.ended_at or exc.last_out_at) - exc.started_at).total_seconds() / 60
        self.work.emit(
            EventType.TEMPERATURE_EXCURSION,
            order.id,
            TemperatureExcursionEvent(
                order_id=order.id,
                shipment_id=s.id,
                excursion_id=exc.id,
                kind=exc.kind,
                state=state,
                peak=exc.peak,
                minutes=round(minutes, 2),
            ),
        )

    def _escalate(self, order: TherapyOrder, s: Shipment, exc: TemperatureExcursion, minutes: float, why: str) -> None:
        exc.escalated = True
        self.work.session.flush()
        self.work.audit(
            "update",
            "TemperatureExcursion",
            exc.id,
            new={"kind": exc.kind, "peak": exc.peak, "minutes": round(minutes, 2), "escalated": True},
            reason=why,
        )
        self._event(order, s, exc, "escalated")
        raise_alert(
            self.work,
            order.id,
            "critical",
            "temperature.excursion",
            f"shipment {s.id} (order {order.id}, CoI {order.coi}) {exc.kind}: peak {exc.peak:g} against limit "
            f"{exc.limit_value:g} for {minutes:.0f} min ({why}); order held for QA assessment",
        )
        if order.status in ("active", "on-hold"):
            held = any(
                h.kind == EXCURSION_HOLD and h.released_at is None
                for h in OrderRepository.from_session(self.work.session).open_holds(order.id)
            )
            if not held:
                OrderService(self.work, self.partners).hold(
                    PlaceHold(
                        order_id=order.id,
                        kind=EXCURSION_HOLD,
                        reason=f"temperature excursion {exc.id} ({exc.kind}) on shipment {s.id}",
                    )
                )

    def _close(
        self, order: TherapyOrder, s: Shipment, exc: TemperatureExcursion, r: Reading, result: BatchResult
    ) -> None:
        exc.ended_at = r.at
        minutes = (exc.ended_at - exc.started_at).total_seconds() / 60
        leg = leg_of(get_product(order.product_code), s.leg_code)
        if not exc.escalated and minutes >= leg.temperature.tolerated_minutes:
            # Nothing was measured in range before this reading: as GDP requires, the excursion is
            # taken to have lasted until it (a logger reporting hourly cannot shorten it).
            self._escalate(order, s, exc, minutes, "excursion lasted the tolerated time until the next reading")
            result.escalated.append(exc.id)
        obs = ResourceRepository.for_work(self.work).create(
            self.work,
            fhir.excursion_observation(
                order_id=order.id,
                patient_id=order.patient_id,
                task_id=s.task_id,
                leg=leg,
                kind=exc.kind,
                start=exc.started_at,
                end=exc.ended_at,
                peak=exc.peak,
                minutes=minutes,
                escalated=exc.escalated,
            ),
            reason=f"temperature excursion {exc.id}",
        )
        exc.observation_id = obs.id
        result.closed.append(exc.id)
        self._event(order, s, exc, "closed")
        if not exc.escalated:
            raise_alert(
                self.work,
                order.id,
                "warning",
                "temperature.excursion-recorded",
                f"shipment {s.id} (order {order.id}) {exc.kind} for {minutes:.0f} min, peak {exc.peak:g}: "
                f"within the tolerated {leg.temperature.tolerated_minutes} min, recorded",
            )


def state_of(work: Work, shipment_id: str) -> TemperatureState | None:
    return work.session.get(TemperatureState, shipment_id)
