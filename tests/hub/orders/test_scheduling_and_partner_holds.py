from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hub.db.uow import Store
from hub.errors import GuardFailed, NotFound
from hub.orders.partner_requests import PartnerRequests
from hub.orders.references import find_order
from hub.orders.scheduling import ScheduleCollection, SchedulingService
from hub.orders.service import OrderService
from hub.partners.loader import PartnerDirectory
from tests.builders import Driver


def _schedule(store: Store, partners: PartnerDirectory, **kw: object):  # type: ignore[no-untyped-def]
    cmd = ScheduleCollection(**kw)  # type: ignore[arg-type]
    return store.run(lambda w: SchedulingService(w, partners).schedule(cmd))


def test_booking_moves_the_order_and_cancel_keeps_it(store: Store, partners: PartnerDirectory) -> None:
    driver = Driver.place(store, partners)
    start = datetime.now(UTC) + timedelta(days=3)
    view = _schedule(
        store,
        partners,
        order_id=driver.order.id,
        partner="st-marys",
        appointment_id="A1",
        action="book",
        start=start,
        end=start + timedelta(hours=3),
    )
    assert view.stage == "collection-scheduled"
    with pytest.raises(GuardFailed, match="already has appointment"):
        _schedule(
            store,
            partners,
            order_id=driver.order.id,
            partner="st-marys",
            appointment_id="A2",
            action="book",
            start=start,
        )
    with pytest.raises(GuardFailed, match="neither ordered nor collects"):
        _schedule(
            store,
            partners,
            order_id=driver.order.id,
            partner="lakeside-reference-lab",
            appointment_id="A3",
            action="book",
            start=start,
        )
    assert (
        _schedule(
            store, partners, order_id=driver.order.id, partner="st-marys", appointment_id="A1", action="cancel"
        ).status
        == "cancelled"
    )
    with pytest.raises(NotFound):
        _schedule(
            store,
            partners,
            order_id=driver.order.id,
            partner="st-marys",
            appointment_id="A1",
            action="reschedule",
            start=start,
        )
    again = _schedule(
        store, partners, order_id=driver.order.id, partner="st-marys", appointment_id="A2", action="book", start=start
    )
    assert again.status == "booked"
    driver.order = driver.order.model_copy(update={"stage": "collection-scheduled"})
    driver.walk_to("collected")
    with pytest.raises(GuardFailed, match="can no longer be scheduled"):
        _schedule(
            store,
            partners,
            order_id=driver.order.id,
            partner="st-marys",
            appointment_id="A2",
            action="reschedule",
            start=start,
        )


def test_partner_hold_is_released_only_by_that_partner_and_never_lifts_other_holds(
    store: Store, partners: PartnerDirectory
) -> None:
    driver = Driver.place(store, partners)
    oid = driver.order.id
    store.run(lambda w: PartnerRequests(w, partners).hold(oid, "st-marys", "patient unwell"), actor="hl7v2:st-marys")
    with pytest.raises(GuardFailed, match="no hold opened by"):
        store.run(lambda w: PartnerRequests(w, partners).release(oid, "riverside-cancer-center", "go"))
    from hub.orders.schemas import PlaceHold

    store.run(lambda w: OrderService(w, partners).hold(PlaceHold(order_id=oid, reason="QA looks", kind="manual")))
    view = store.run(
        lambda w: PartnerRequests(w, partners).release(oid, "st-marys", "patient better"), actor="hl7v2:st-marys"
    )
    assert view.status == "on-hold"  # the manual hold still needs a signed QA decision


def test_references_only_reach_the_partners_own_orders(store: Store, partners: PartnerDirectory) -> None:
    driver = Driver.place(store, partners)
    coi, placer = driver.order.coi, driver.order.placer_number
    assert store.run(lambda w: find_order(w, "st-marys", [placer]).id) == driver.order.id
    assert store.run(lambda w: find_order(w, "polar-courier", [coi]).id) == driver.order.id  # a participant
    with pytest.raises(NotFound):
        store.run(lambda w: find_order(w, "riverside-cancer-center", [coi, placer, driver.order.id]))
