"""Shipment legs, courier events, custody and the stage moves courier events ask for."""

from __future__ import annotations

from datetime import timedelta

from hub.db.types import utcnow
from hub.db.uow import Store
from hub.fhirstore.repository import ResourceRepository
from hub.fhirstore.validation import validate
from hub.logistics.fhir import EXT_ETA, EXT_TRANSPORT_STATUS
from hub.logistics.repository import LogisticsRepository
from hub.logistics.schemas import CourierEvent, ShipmentEventKind
from hub.logistics.service import ShipmentService
from hub.orders.repository import OrderRepository
from hub.partners.loader import PartnerDirectory
from tests.logistics_support import alert_kinds, order_at, register


def _event(kind: ShipmentEventKind | None, code: str, minutes_ago: float = 1, **kw: object) -> CourierEvent:
    return CourierEvent(
        courier="polar-courier",
        tracking_number="PLR000000001",
        courier_code=code,
        kind=kind,
        occurred_at=utcnow() - timedelta(minutes=minutes_ago),
        **kw,  # type: ignore[arg-type]
    )


def _apply(store: Store, partners: PartnerDirectory, event: CourierEvent) -> str:
    return store.run(lambda w: ShipmentService(w, partners).apply(event).outcome, actor="test")


def test_pickup_records_custody_but_waits_for_the_identity_checkpoint(store: Store, partners: PartnerDirectory) -> None:
    driver = order_at(store, partners, "collected")
    shipment = register(store, partners, driver.order.id)
    assert shipment.origin == "st-marys"
    assert shipment.destination == "leiden-cell-factory"

    _apply(store, partners, _event(ShipmentEventKind.picked_up, "PU", location="Rochester NY"))
    order = store.read(lambda s: OrderRepository.from_session(s).get(driver.order.id))
    assert order.stage == "collected"  # no courier-handoff verification yet: the guard holds it
    handoffs = store.read(lambda s: OrderRepository.from_session(s).handoffs(driver.order.id))
    assert [(h.from_party, h.to_party) for h in handoffs] == [("st-marys", "polar-courier")]
    s = store.read(lambda s: LogisticsRepository.from_session(s).shipment(shipment.id))
    assert s.status == "picked-up"
    assert s.pending_stage == "shipped-to-manufacturing"
    assert "shipment.stage-pending" in alert_kinds(store, driver.order.id)

    driver.verify("courier-handoff")  # the courier's driver scans the bag
    entered = store.run(lambda w: ShipmentService(w, partners).retry_pending(driver.order.id))
    assert entered == ["shipped-to-manufacturing"]
    s = store.read(lambda s: LogisticsRepository.from_session(s).shipment(shipment.id))
    assert s.pending_stage is None


def test_delivery_moves_custody_and_the_journey_when_receipt_is_verified(
    store: Store, partners: PartnerDirectory
) -> None:
    driver = order_at(store, partners, "collected")
    shipment = register(store, partners, driver.order.id)
    driver.verify("courier-handoff")
    _apply(store, partners, _event(ShipmentEventKind.picked_up, "PU", 30))
    assert (
        store.read(lambda s: OrderRepository.from_session(s).get(driver.order.id)).stage == "shipped-to-manufacturing"
    )
    _apply(store, partners, _event(ShipmentEventKind.in_transit, "IT", 20, eta=utcnow() + timedelta(hours=3)))
    driver.verify("manufacturing-receipt")
    outcome = _apply(store, partners, _event(ShipmentEventKind.delivered, "DL", 5, signed_by="goods-in"))
    assert outcome == "status delivered"
    order = store.read(lambda s: OrderRepository.from_session(s).get(driver.order.id))
    assert order.stage == "received-at-manufacturing"
    handoffs = store.read(lambda s: OrderRepository.from_session(s).handoffs(driver.order.id))
    assert [(h.from_party, h.to_party) for h in handoffs][-1] == ("polar-courier", "leiden-cell-factory")

    task = store.read(lambda s: ResourceRepository.from_session(s).read("Task", shipment.task_id)).content
    validate(task, "Task")
    ext = {e["url"]: e for e in task["extension"]}
    assert ext[EXT_TRANSPORT_STATUS]["valueCode"] == "completed"
    assert EXT_ETA in ext
    assert task["status"] == "completed"
    assert task["executionPeriod"]["start"] < task["executionPeriod"]["end"]
    assert task["basedOn"] == [{"reference": f"ServiceRequest/{driver.order.id}"}]


def test_late_and_repeated_events_never_move_a_leg_backwards(store: Store, partners: PartnerDirectory) -> None:
    driver = order_at(store, partners, "collected")
    shipment = register(store, partners, driver.order.id)
    delivered = _event(ShipmentEventKind.delivered, "DL", 5)
    _apply(store, partners, delivered)
    assert _apply(store, partners, delivered).startswith("duplicate")
    assert "stays delivered" in _apply(store, partners, _event(ShipmentEventKind.in_transit, "IT", 60))
    s = store.read(lambda s: LogisticsRepository.from_session(s).shipment(shipment.id))
    assert s.status == "delivered"
    assert len(store.read(lambda s: LogisticsRepository.from_session(s).events(driver.order.id))) == 2


def test_unknown_code_is_recorded_and_alerted(store: Store, partners: PartnerDirectory) -> None:
    driver = order_at(store, partners, "collected")
    register(store, partners, driver.order.id)
    outcome = _apply(store, partners, _event(None, "ZZ"))
    assert outcome.startswith("unknown courier code")
    recorded = store.read(lambda s: LogisticsRepository.from_session(s).events(driver.order.id))
    assert [(e.courier_code, e.canonical) for e in recorded] == [("ZZ", "unknown")]
    assert "courier.unknown-code" in alert_kinds(store, driver.order.id)


def test_exception_alerts_critically(store: Store, partners: PartnerDirectory) -> None:
    driver = order_at(store, partners, "collected")
    register(store, partners, driver.order.id)
    _apply(store, partners, _event(ShipmentEventKind.exception, "EX"))
    assert "shipment.exception" in alert_kinds(store, driver.order.id)


def test_a_pickup_after_an_exception_still_moves_custody_and_the_journey(
    store: Store, partners: PartnerDirectory
) -> None:
    """An exception is not progress: "pickup delayed" then "picked up" was "status stays exception",
    with no custody handoff, no picked_up_at and no stage proposal."""
    driver = order_at(store, partners, "collected")
    shipment = register(store, partners, driver.order.id)
    driver.verify("courier-handoff")
    _apply(store, partners, _event(ShipmentEventKind.exception, "PICKUP-DELAYED", 60))
    pickup = _event(ShipmentEventKind.picked_up, "PU", 30)
    assert _apply(store, partners, pickup) == "status picked-up"
    s = store.read(lambda s: LogisticsRepository.from_session(s).shipment(shipment.id))
    assert s.status == "picked-up"
    assert s.picked_up_at == pickup.occurred_at
    handoffs = store.read(lambda s: OrderRepository.from_session(s).handoffs(driver.order.id))
    assert [(h.from_party, h.to_party) for h in handoffs] == [("st-marys", "polar-courier")]
    order = store.read(lambda s: OrderRepository.from_session(s).get(driver.order.id))
    assert order.stage == "shipped-to-manufacturing"

    # The same after an exception in transit: a late pickup changes nothing, a delivery delivers.
    _apply(store, partners, _event(ShipmentEventKind.in_transit, "IT", 25))
    _apply(store, partners, _event(ShipmentEventKind.exception, "DELAY", 20))
    assert _apply(store, partners, pickup).startswith("duplicate")
    assert _apply(store, partners, _event(ShipmentEventKind.picked_up, "PU", 28)) == (
        "picked-up recorded; status stays exception"
    )
    driver.verify("manufacturing-receipt")
    assert _apply(store, partners, _event(ShipmentEventKind.delivered, "DL", 5)) == "status delivered"
    s = store.read(lambda s: LogisticsRepository.from_session(s).shipment(shipment.id))
    assert s.picked_up_at == pickup.occurred_at
    handoffs = store.read(lambda s: OrderRepository.from_session(s).handoffs(driver.order.id))
    assert [(h.from_party, h.to_party) for h in handoffs] == [
        ("st-marys", "polar-courier"),
        ("polar-courier", "leiden-cell-factory"),
    ]
    order = store.read(lambda s: OrderRepository.from_session(s).get(driver.order.id))
    assert order.stage == "received-at-manufacturing"


def test_a_resent_event_from_a_courier_clock_ahead_is_recorded_once(store: Store, partners: PartnerDirectory) -> None:
    """The event was known by its time clamped to ours, which differs on every resend."""
    driver = order_at(store, partners, "collected")
    shipment = register(store, partners, driver.order.id)
    ahead = _event(ShipmentEventKind.in_transit, "IT", -10)  # the courier's clock runs 10 min ahead
    assert _apply(store, partners, ahead) == "status in-transit"
    assert _apply(store, partners, ahead).startswith("duplicate")
    recorded = store.read(lambda s: LogisticsRepository.from_session(s).events(driver.order.id))
    assert [e.courier_code for e in recorded] == ["IT"]
    assert "dated at receipt" in recorded[0].outcome
    s = store.read(lambda s: LogisticsRepository.from_session(s).shipment(shipment.id))
    assert s.picked_up_at is not None
    assert s.picked_up_at < ahead.occurred_at
