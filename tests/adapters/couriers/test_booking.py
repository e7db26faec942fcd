"""Courier bookings: idempotent, retried with backoff (respx unit tests), and end to end against a
real local courier service through the outbound dispatcher."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import respx
from sqlalchemy import update

from adapters.couriers.booking import PolarRestBooking
from adapters.couriers.sandbox import CourierSandbox
from adapters.local_server import LocalServer
from hub.context import HubContext
from hub.db.engine import LockLimits
from hub.db.models_logistics import OutboundWork
from hub.db.uow import open_store
from hub.errors import StoreUnavailable
from hub.logistics.policy import Policy
from hub.logistics.ports import BookingRequest, PartnerCallError
from hub.logistics.repository import LogisticsRepository
from hub.logistics.schemas import BookShipment
from hub.logistics.service import ShipmentService
from hub.logistics.worker import OutboundDispatcher, Ports
from hub.partners.loader import PartnerDirectory
from hub.runtime import logistics_ports
from tests.logistics_support import alert_kinds, context, order_at, register
from tests.support.hung_db import HungDatabase

REQ = BookingRequest(
    idempotency_key="key-1",
    shipment_id="s-1",
    reference="CHA999826000001-apheresis-chilled",
    origin="st-marys",
    destination="leiden-cell-factory",
    pickup_after=datetime(2026, 11, 25, 12, tzinfo=UTC),
    temperature_min_c=2,
    temperature_max_c=8,
    material="apheresis",
)
OK = {"booking_id": "BK-1", "tracking_number": "PLR000000042", "eta": "2026-11-26T08:00:00+00:00"}


@respx.mock
def test_retries_5xx_with_the_same_idempotency_key() -> None:
    route = respx.post("https://courier.test/v2/bookings").mock(
        side_effect=[httpx.Response(503), httpx.ConnectTimeout("slow"), httpx.Response(201, json=OK)]
    )
    client = PolarRestBooking("https://courier.test/v2", "t0k", retries=3, backoff_s=0.001)
    result = asyncio.run(client.book(REQ))
    assert result.tracking_number == "PLR000000042"
    assert result.eta == datetime(2026, 11, 26, 8, tzinfo=UTC)
    assert route.call_count == 3
    assert {c.request.headers["idempotency-key"] for c in route.calls} == {"key-1"}
    assert route.calls[0].request.headers["authorization"] == "Bearer t0k"


@respx.mock
def test_4xx_is_final_and_exhausted_retries_are_retryable() -> None:
    respx.post("https://courier.test/v2/bookings").mock(return_value=httpx.Response(400, json={"error": "bad"}))
    client = PolarRestBooking("https://courier.test/v2", "t0k", retries=3, backoff_s=0.001)
    with pytest.raises(PartnerCallError) as refused:
        asyncio.run(client.book(REQ))
    assert not refused.value.retryable
    assert refused.value.code == "http-400"
    respx.post("https://courier.test/v2/bookings").mock(return_value=httpx.Response(502))
    with pytest.raises(PartnerCallError) as down:
        asyncio.run(client.book(REQ))
    assert down.value.retryable


@respx.mock
def test_an_eta_without_offset_is_utc_and_an_unreadable_one_is_no_eta() -> None:
    route = respx.post("https://courier.test/v2/bookings")
    client = PolarRestBooking("https://courier.test/v2", "t0k", retries=0)
    route.mock(return_value=httpx.Response(201, json={**OK, "eta": "2026-11-26T08:00:00"}))
    assert asyncio.run(client.book(REQ)).eta == datetime(2026, 11, 26, 8, tzinfo=UTC)
    route.mock(return_value=httpx.Response(201, json={**OK, "eta": "tomorrow morning"}))
    booked = asyncio.run(client.book(REQ))  # the booking exists: it is not "unreadable"
    assert (booked.tracking_number, booked.eta) == ("PLR000000042", None)


@pytest.fixture
def ctx(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubContext]:
    monkeypatch.setenv("POLAR_COURIER_API_TOKEN", "sandbox-token")
    c = context(db_url)
    try:
        yield c
    finally:
        c.store.dispose()


@pytest.mark.slow
def test_booking_through_the_dispatcher_against_a_real_courier(ctx: HubContext) -> None:
    courier = CourierSandbox(token="sandbox-token", fail_next=1)
    driver = order_at(ctx.store, ctx.partners, "collected")
    cmd = BookShipment(order_id=driver.order.id, customs_partner="eu-customs-ics2")
    with LocalServer(courier.app()) as server:
        ports = logistics_ports(ctx, {"polar-courier": server.url + "/v2"})
        policy = Policy(outbound_backoff_base=Policy().outbound_backoff_base * 0)
        dispatcher = OutboundDispatcher(ctx.store, ctx.partners, ports, policy)
        view = ctx.store.run(lambda w: ShipmentService(w, ctx.partners).book(cmd))
        again = ctx.store.run(lambda w: ShipmentService(w, ctx.partners).book(cmd))
        assert again.id == view.id
        assert view.status == "booking"
        asyncio.run(dispatcher.run_once())  # 503 once (retried inside the client), then booked
    s = ctx.store.read(lambda s: LogisticsRepository.from_session(s).shipment(view.id))
    assert s.status == "booked"
    assert s.eta is not None
    assert len(courier.bookings) == 1
    (issued,) = courier.bookings.values()
    assert s.tracking_number == issued["tracking_number"]
    assert courier.requests == 2
    (work,) = ctx.store.read(lambda s: LogisticsRepository.from_session(s).work_for("booking", view.id))
    assert work.status == "done"
    assert [a.outcome for a in ctx.store.read(lambda s: LogisticsRepository.from_session(s).attempts(work.id))] == [
        "ok"
    ]


@pytest.mark.slow
def test_a_refused_booking_fails_the_leg_and_alerts(ctx: HubContext, monkeypatch: pytest.MonkeyPatch) -> None:
    courier = CourierSandbox(token="another-token")  # the hub's token is wrong: 401, final
    driver = order_at(ctx.store, ctx.partners, "collected")
    with LocalServer(courier.app()) as server:
        ports = logistics_ports(ctx, {"polar-courier": server.url + "/v2"})
        dispatcher = OutboundDispatcher(ctx.store, ctx.partners, ports, Policy())
        view = ctx.store.run(
            lambda w: ShipmentService(w, ctx.partners).book(
                BookShipment(order_id=driver.order.id, customs_partner="eu-customs-ics2")
            )
        )
        asyncio.run(dispatcher.run_once())
    s = ctx.store.read(lambda s: LogisticsRepository.from_session(s).shipment(view.id))
    assert s.status == "failed"
    assert "shipment.booking-failed" in alert_kinds(ctx.store, driver.order.id)


@pytest.mark.slow
def test_the_requested_pickup_time_reaches_the_courier(ctx: HubContext) -> None:
    courier = CourierSandbox(token="sandbox-token")  # its ETA is the pickup time it was sent + transit
    wanted = (datetime.now(UTC) + timedelta(days=1)).replace(hour=8, minute=0, second=0, microsecond=0)
    booked = []
    with LocalServer(courier.app()) as server:
        ports = logistics_ports(ctx, {"polar-courier": server.url + "/v2"})
        dispatcher = OutboundDispatcher(ctx.store, ctx.partners, ports, Policy())
        for pickup in (wanted, datetime.now(UTC) - timedelta(hours=3)):  # a time already passed: now
            driver = order_at(ctx.store, ctx.partners, "collected")
            cmd = BookShipment(order_id=driver.order.id, customs_partner="eu-customs-ics2", pickup_after=pickup)
            view = ctx.store.run(lambda w, cmd=cmd: ShipmentService(w, ctx.partners).book(cmd))
            before = datetime.now(UTC)
            asyncio.run(dispatcher.run_once())
            leg = ctx.store.read(lambda s, i=view.id: LogisticsRepository.from_session(s).shipment(i))
            booked.append((before, leg))
    (_, later), (before, past) = booked
    assert later.pickup_after == wanted
    assert later.eta == wanted + courier.transit
    assert past.eta is not None
    assert past.eta >= before + courier.transit


@respx.mock
def test_an_answer_that_cannot_be_recorded_is_never_booked_again(ctx: HubContext) -> None:
    # The courier answers with a tracking number another leg already has: recording it fails.
    other = order_at(ctx.store, ctx.partners, "collected")
    register(ctx.store, ctx.partners, other.order.id, tracking="PLR000000042")
    driver = order_at(ctx.store, ctx.partners, "collected")
    ports = logistics_ports(ctx, {"polar-courier": "https://courier.test/v2"})
    ports.customs = lambda partner: None  # the leg's declaration is not what this test is about
    dispatcher = OutboundDispatcher(ctx.store, ctx.partners, ports, Policy())
    cmd = BookShipment(order_id=driver.order.id, customs_partner="eu-customs-ics2")
    view = ctx.store.run(lambda w: ShipmentService(w, ctx.partners).book(cmd))
    route = respx.post("https://courier.test/v2/bookings").mock(return_value=httpx.Response(201, json=OK))
    for _ in range(Policy().outbound_max_attempts):
        ctx.store.run(lambda w: w.session.execute(update(OutboundWork).values(next_attempt_at=w.now)))
        asyncio.run(dispatcher.run_once())
    s = ctx.store.read(lambda x: LogisticsRepository.from_session(x).shipment(view.id))
    (work,) = ctx.store.read(lambda x: LogisticsRepository.from_session(x).work_for("booking", view.id))
    assert route.call_count == 1
    assert (s.status, work.status) == ("failed", "failed")
    assert (work.last_error or "").startswith("unrecorded:")
    assert "booked BK-1 (tracking PLR000000042)" in (work.last_error or "")
    assert "shipment.booking-failed" in alert_kinds(ctx.store, driver.order.id)


def test_a_hung_database_does_not_freeze_the_event_loop_during_a_dispatcher_pass(
    partners: PartnerDirectory,
) -> None:
    """The dispatcher shares the hub's event loop with /healthz, the MLLP listener and the API. Its
    reads ran on the loop, so a database that hangs froze all of them; now the pass waits in a
    thread while the loop goes on (here: another coroutine keeps ticking)."""
    server = HungDatabase()
    hung = open_store(server.url, check=False, limits=LockLimits(connect_timeout_s=2))
    dispatcher = OutboundDispatcher(hung, partners, Ports(lambda p: None, lambda p: None), Policy())

    async def a_pass_and_the_ticks_meanwhile() -> tuple[int, float, BaseException | None]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        try:
            await dispatcher.run_once()
            failure = None
        except Exception as exc:
            failure = exc
        ticker.cancel()
        return ticks, time.monotonic() - started, failure

    try:
        ticks, waited, failure = asyncio.run(a_pass_and_the_ticks_meanwhile())
    finally:
        server.close()
        hung.dispose()
    assert isinstance(failure, StoreUnavailable)  # after the connect timeout: the pass fails, retried later
    assert waited > 1.5
    assert ticks >= waited / 0.05 * 0.5  # the loop ran on while the pass waited for the database


def test_a_database_outage_backs_the_dispatcher_off_and_is_logged_once(
    tmp_path: Path, sqlite_template: Path, partners: PartnerDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    """While the database is down the passes space out (capped exponential backoff) and one line
    says so; one more says when it is back. It was an ERROR line every 0.5 s for the whole outage."""
    database = tmp_path / "hub.db"
    database.mkdir()  # a directory is no database: every read fails until the file is there
    store = open_store(f"sqlite:///{database}", check=False)
    dispatcher = OutboundDispatcher(store, partners, Ports(lambda p: None, lambda p: None), Policy())

    async def outage_then_recovery() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(dispatcher.run(stop, poll_s=0.05, max_backoff_s=0.4))
        await asyncio.sleep(2.0)  # without backoff: 40 passes
        database.rmdir()
        shutil.copy(sqlite_template, database)
        for _ in range(100):
            if "recovered" in caplog.text:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await running

    try:
        with caplog.at_level(logging.DEBUG, logger="hub"):
            asyncio.run(outage_then_recovery())
    finally:
        store.dispose()
    failed_passes = [r for r in caplog.records if r.getMessage().startswith("read failed, store unavailable")]
    assert 4 <= len(failed_passes) <= 10  # 0.1 + 0.2 + 0.4 + 0.4 + ... s apart
    said = [r.getMessage() for r in caplog.records if r.name == "hub.logistics.worker" and r.levelno >= logging.INFO]
    assert said == [
        "logistics dispatcher pass failed: StoreUnavailable; retrying with backoff up to 0.4 s, "
        "logged again when a pass succeeds",
        f"logistics dispatcher recovered after {len(failed_passes)} failed passes",
    ]
