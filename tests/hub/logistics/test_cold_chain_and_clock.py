"""Temperature excursion rules, the viability clock, its prediction from the ETA, conditioning."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import update

from hub.db.models import TherapyOrder
from hub.db.types import utcnow
from hub.db.uow import Store
from hub.errors import Forbidden
from hub.fhirstore.repository import ResourceRepository
from hub.logistics.policy import Policy
from hub.logistics.repository import LogisticsRepository
from hub.logistics.schemas import Reading, RecordReadings, ScheduleConditioning
from hub.logistics.temperature import EXCURSION_HOLD, TemperatureService
from hub.logistics.viability import ViabilityService, countdown
from hub.logistics.worker import sweep
from hub.orders.repository import OrderRepository
from hub.orders.schemas import ReleaseHold, SignerCredentials
from hub.orders.service import QA_RELEASED_HOLDS, OrderService
from hub.partners.loader import PartnerDirectory
from tests.builders import OPERATOR, QA, ensure_users
from tests.logistics_support import alert_kinds, events, order_at, register


def _readings(start: datetime, temps: list[float], step_min: float = 5) -> tuple[Reading, ...]:
    return tuple(Reading(at=start + timedelta(minutes=i * step_min), temperature_c=t) for i, t in enumerate(temps))


def _record(store: Store, partners: PartnerDirectory, readings: tuple[Reading, ...], tracking: str = "PLR000000001"):  # type: ignore[no-untyped-def]
    cmd = RecordReadings(courier="polar-courier", tracking_number=tracking, logger="L-1", readings=readings)
    return store.run(lambda w: TemperatureService(w, partners).record(cmd))


def test_short_excursion_is_recorded_and_does_not_hold(store: Store, partners: PartnerDirectory) -> None:
    driver = order_at(store, partners, "collected")
    register(store, partners, driver.order.id)
    start = utcnow() - timedelta(hours=2)
    # 2-8 °C leg, 15 min tolerated: too warm from +10 min, back in range at +20 (10 min at worst).
    result = _record(store, partners, _readings(start, [5, 5.5, 9.5, 9.1, 6, 5]))
    assert result.stored == 6
    assert result.out_of_range == 2
    assert len(result.opened) == 1
    assert len(result.closed) == 1
    assert not result.escalated
    order = store.read(lambda s: OrderRepository.from_session(s).get(driver.order.id))
    assert order.status == "active"
    kinds = alert_kinds(store, driver.order.id)
    assert "temperature.excursion-recorded" in kinds
    assert "temperature.excursion" not in kinds
    exc = store.read(lambda s: LogisticsRepository.from_session(s).excursions(driver.order.id))[0]
    assert exc.peak == 9.5
    assert exc.kind == "too-warm"
    obs = store.read(lambda s: ResourceRepository.from_session(s).read("Observation", exc.observation_id or "")).content
    assert obs["valueQuantity"]["value"] == 9.5
    assert obs["interpretation"][0]["coding"][0]["code"] == "H"
    summary = store.read(lambda s: ResourceRepository.from_session(s).read("Observation", result.observation_id or ""))
    components = {c["code"]["coding"][0]["code"]: c for c in summary.content["component"]}
    assert components["reading-count"]["valueInteger"] == 6
    assert components["temperature-maximum"]["valueQuantity"]["value"] == 9.5


def test_long_excursion_escalates_and_holds_the_order_across_batches(store: Store, partners: PartnerDirectory) -> None:
    driver = order_at(store, partners, "collected")
    register(store, partners, driver.order.id)
    start = utcnow() - timedelta(hours=3)
    first = _record(store, partners, _readings(start, [4, 1.5, 1.2]))  # too cold from +5 min
    assert first.opened
    assert not first.escalated
    second = _record(store, partners, _readings(start + timedelta(minutes=15), [1.0, 0.8, 1.9]))  # 20 min cold
    assert second.escalated == first.opened
    order = store.read(lambda s: OrderRepository.from_session(s).get(driver.order.id))
    assert order.status == "on-hold"
    holds = store.read(lambda s: OrderRepository.from_session(s).open_holds(driver.order.id))
    assert [h.kind for h in holds] == ["temperature-excursion"]
    assert "temperature.excursion" in alert_kinds(store, driver.order.id)
    # A replayed (older) batch is stored but does not reopen or re-escalate anything.
    again = _record(store, partners, _readings(start, [1.0, 1.0]))
    assert not again.opened
    assert not again.escalated
    assert store.read(lambda s: LogisticsRepository.from_session(s).reading_count(first.shipment_id)) == 8


def test_an_excursion_hold_is_released_by_qa_only(store: Store, partners: PartnerDirectory) -> None:
    """Its alert says "held for QA assessment", and the README says QA releases it; an operator's
    signature released it all the same."""
    assert EXCURSION_HOLD in QA_RELEASED_HOLDS
    driver = order_at(store, partners, "collected")
    register(store, partners, driver.order.id)
    start = utcnow() - timedelta(hours=3)
    _record(store, partners, _readings(start, [4, 1.5, 1.2, 1.0, 0.8, 0.9]))
    (hold,) = store.read(lambda s: OrderRepository.from_session(s).open_holds(driver.order.id))
    ensure_users(store)
    release = ReleaseHold(
        order_id=driver.order.id,
        hold_id=hold.id,
        rationale="excursion assessed: product within stability data",
        signer=SignerCredentials(username=OPERATOR[0], password=OPERATOR[1]),
    )
    with pytest.raises(Forbidden, match="qa role"):
        store.run(lambda w: OrderService(w, partners).release_hold(release))
    qa = release.model_copy(update={"signer": SignerCredentials(username=QA[0], password=QA[1])})
    assert store.run(lambda w: OrderService(w, partners).release_hold(qa)).status == "active"


def test_cryogenic_leg_escalates_at_once_and_watches_nitrogen(store: Store, partners: PartnerDirectory) -> None:
    driver = order_at(store, partners, "released")
    register(store, partners, driver.order.id, leg="product-cryogenic", tracking="PLR000000009")
    start = utcnow() - timedelta(hours=1)
    readings = (
        Reading(at=start, temperature_c=-180, ln2_percent=60),
        Reading(at=start + timedelta(minutes=5), temperature_c=-175, ln2_percent=15),
    )
    result = _record(store, partners, readings, tracking="PLR000000009")
    assert result.escalated == result.opened
    assert len(result.opened) == 1
    exc = store.read(lambda s: LogisticsRepository.from_session(s).excursions(driver.order.id))[0]
    assert exc.kind == "ln2-low"


def test_a_long_excursion_seen_by_a_sparse_logger_escalates_when_it_closes(
    store: Store, partners: PartnerDirectory
) -> None:
    """12 °C at +10 min, the next reading (in range) an hour later: it was closed "within the
    tolerated 15 min" although nothing showed it back in range for 60 min."""
    driver = order_at(store, partners, "collected")
    register(store, partners, driver.order.id)  # 2-8 °C, 15 min tolerated
    start = utcnow() - timedelta(hours=3)
    readings = (
        Reading(at=start, temperature_c=5),
        Reading(at=start + timedelta(minutes=10), temperature_c=12.0),
        Reading(at=start + timedelta(minutes=70), temperature_c=5),
    )
    result = _record(store, partners, readings)
    assert result.escalated == result.opened == result.closed
    (exc,) = store.read(lambda s: LogisticsRepository.from_session(s).excursions(driver.order.id))
    assert exc.escalated
    assert exc.ended_at is not None
    assert (exc.ended_at - exc.started_at) == timedelta(minutes=60)
    order = store.read(lambda s: OrderRepository.from_session(s).get(driver.order.id))
    assert order.status == "on-hold"
    kinds = alert_kinds(store, driver.order.id)
    assert "temperature.excursion" in kinds
    assert "temperature.excursion-recorded" not in kinds
    obs = store.read(lambda s: ResourceRepository.from_session(s).read("Observation", exc.observation_id or "")).content
    components = {c["code"]["coding"][0]["code"]: c for c in obs["component"]}
    assert components["escalated"]["valueBoolean"] is True


def test_a_point_without_a_temperature_does_not_end_a_warm_excursion(store: Store, partners: PartnerDirectory) -> None:
    """The logger posts its other channel between temperature points; such a point counted as in
    range, so an hour at 12 °C became 13 excursions of 0 min, none escalated."""
    driver = order_at(store, partners, "collected")
    register(store, partners, driver.order.id)  # 2-8 °C, 15 min tolerated
    start = utcnow() - timedelta(hours=2)
    readings: list[Reading] = []
    for i in range(13):
        readings.append(Reading(at=start + timedelta(minutes=5 * i), temperature_c=12.0))
        readings.append(Reading(at=start + timedelta(minutes=5 * i, seconds=30)))
    readings.append(Reading(at=start + timedelta(minutes=65), temperature_c=6.0))  # back in range
    result = _record(store, partners, tuple(readings))
    assert len(result.opened) == 1
    assert result.escalated == result.opened == result.closed
    (exc,) = store.read(lambda s: LogisticsRepository.from_session(s).excursions(driver.order.id))
    assert exc.readings == 13
    assert exc.ended_at == start + timedelta(minutes=65)
    order = store.read(lambda s: OrderRepository.from_session(s).get(driver.order.id))
    assert order.status == "on-hold"


def test_the_sweep_escalates_an_excursion_whose_logger_went_silent(store: Store, partners: PartnerDirectory) -> None:
    """An open excursion was judged only when the next reading came: a logger that stopped
    reporting at 12 °C kept it "tolerated" forever."""
    silent = order_at(store, partners, "collected")
    register(store, partners, silent.order.id)  # 2-8 °C, 15 min tolerated
    start = utcnow() - timedelta(hours=3)
    first = _record(store, partners, _readings(start, [5, 12.0]))  # then nothing
    assert first.opened
    assert not first.escalated
    recent = order_at(store, partners, "collected")
    register(store, partners, recent.order.id, tracking="PLR000000002")
    _record(store, partners, _readings(utcnow() - timedelta(minutes=6), [5, 12.0]), tracking="PLR000000002")

    assert sweep(store, Policy(), partners)[1] == 1
    assert store.read(lambda s: OrderRepository.from_session(s).get(silent.order.id)).status == "on-hold"
    (exc,) = store.read(lambda s: LogisticsRepository.from_session(s).excursions(silent.order.id))
    assert exc.escalated
    assert exc.ended_at is None
    assert "temperature.excursion" in alert_kinds(store, silent.order.id)
    assert store.read(lambda s: OrderRepository.from_session(s).get(recent.order.id)).status == "active"
    assert sweep(store, Policy(), partners)[1] == 0  # once


def _start_clock(store: Store, order_id: str, started: datetime, hours: float = 48) -> None:
    def job(w):  # type: ignore[no-untyped-def]
        w.session.execute(
            update(TherapyOrder)
            .where(TherapyOrder.id == order_id)
            .values(viability_started_at=started, viability_deadline=started + timedelta(hours=hours))
        )

    store.run(job)


def test_escalations_at_each_fraction_once_and_at_breach(store: Store, partners: PartnerDirectory) -> None:
    driver = order_at(store, partners, "collected")
    _start_clock(store, driver.order.id, utcnow() - timedelta(hours=40))  # 83 % of 48 h
    assert store.run(lambda w: ViabilityService(w).sweep()) == 2
    assert store.run(lambda w: ViabilityService(w).sweep()) == 0
    levels = store.read(lambda s: LogisticsRepository.from_session(s).viability_levels(driver.order.id))
    assert levels == {"0.5", "0.75"}
    _start_clock(store, driver.order.id, utcnow() - timedelta(hours=49))
    assert store.run(lambda w: ViabilityService(w).sweep()) == 2  # 0.9 and breach
    kinds = alert_kinds(store, driver.order.id)
    assert kinds.count("viability.escalation") == 3
    assert kinds.count("viability.breach") == 1


def test_predicted_breach_is_alerted_before_the_breach(store: Store, partners: PartnerDirectory) -> None:
    driver = order_at(store, partners, "collected")
    order = store.read(lambda s: OrderRepository.from_session(s).get(driver.order.id))
    assert order.viability_deadline is not None
    # The courier's ETA + the 2 h receipt margin lands one hour after the 48 h deadline.
    eta = order.viability_deadline - timedelta(hours=1)
    register(store, partners, driver.order.id, eta=eta)
    alerts = [e for e in events(store, "alert.raised", driver.order.id) if "predicted-breach" in e.payload]
    assert len(alerts) == 1
    assert alerts[0].occurred_at < order.viability_deadline - timedelta(hours=40)  # raised ~47 h early
    assert "breach" not in store.read(lambda s: LogisticsRepository.from_session(s).viability_levels(order.id))
    clock = store.read(lambda s: countdown(LogisticsRepository.from_session(s), order, utcnow()))
    assert clock is not None
    assert clock.predicted_arrival == eta
    assert clock.remaining_minutes > 47 * 60 - 5


def test_product_eta_after_planned_infusion_threatens_conditioning(store: Store, partners: PartnerDirectory) -> None:
    driver = order_at(store, partners, "released")
    start = utcnow() + timedelta(hours=1)
    cmd = ScheduleConditioning(
        order_id=driver.order.id, conditioning_start=start, planned_infusion_at=start + timedelta(hours=30)
    )
    store.run(lambda w: ViabilityService(w).schedule_conditioning(cmd))
    register(
        store, partners, driver.order.id, leg="product-cryogenic", eta=start + timedelta(hours=28)
    )  # 28 h + 4 h site margin > 30 h
    assert alert_kinds(store, driver.order.id).count("conditioning.threatened") == 1


def test_conditioning_start_from_the_order_is_kept(store: Store, partners: PartnerDirectory) -> None:
    from tests.builders import place_cmd

    start = utcnow() + timedelta(days=3)
    cmd = place_cmd(conditioning_start=start)
    from hub.orders.service import OrderService

    view = store.run(lambda w: OrderService(w, partners).place(cmd))
    row = store.read(lambda s: LogisticsRepository.from_session(s).conditioning(view.id))
    assert row is not None
    assert row.conditioning_start == start
    assert row.planned_infusion_at == start + timedelta(days=5)
