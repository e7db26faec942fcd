"""Courier webhooks end to end: signature first, inbox, 202, then mapping and effects from the bus."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from adapters.couriers.endpoints import clear_secret_cache
from adapters.couriers.sandbox import event_body, signed_headers
from adapters.couriers.signatures import easypost_signature
from adapters.local_server import LocalServer
from hub.api.app import create_app
from hub.context import HubContext
from hub.db.models import InboxMessage
from hub.db.models_logistics import ShipmentEvent
from hub.db.types import utcnow
from hub.logistics.repository import LogisticsRepository
from hub.orders.repository import OrderRepository
from hub.runtime import build_runtime
from tests.logistics_support import alert_kinds, context, corpus, drain, order_at, register

POLAR_SECRET = "whsec_cG9sYXItdGVzdC1zZWNyZXQtMDEyMzQ1Njc4OQ=="
EASYPOST_SECRET = "s\u00e9cret"
UPS_KEY = "ups-client-id-123"


@pytest.fixture
def ctx(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubContext]:
    monkeypatch.setenv("POLAR_COURIER_WEBHOOK_SECRET", POLAR_SECRET)
    monkeypatch.setenv("EASYPOST_WEBHOOK_SECRET", EASYPOST_SECRET)
    monkeypatch.setenv("UPS_TRACK_ALERT_CLIENT_ID", UPS_KEY)
    monkeypatch.delenv("POLAR_COURIER_WEBHOOK_SECRET_PREVIOUS", raising=False)
    clear_secret_cache()
    c = context(db_url)
    try:
        yield c
    finally:
        c.store.dispose()
        clear_secret_cache()


@pytest.fixture
def client(ctx: HubContext) -> Iterator[TestClient]:
    with TestClient(create_app(ctx)) as c:
        yield c


def _count(ctx: HubContext, model: type, **where: object) -> int:
    def q(s):  # type: ignore[no-untyped-def]
        stmt = select(func.count()).select_from(model)
        for k, v in where.items():
            stmt = stmt.where(getattr(model, k) == v)
        return s.execute(stmt).scalar_one()

    return int(ctx.store.read(q))


def _inbox(ctx: HubContext) -> list[InboxMessage]:
    return ctx.store.read(lambda s: list(s.scalars(select(InboxMessage).order_by(InboxMessage.received_at))))


def test_easypost_corpus_event_is_verified_stored_and_mapped(ctx: HubContext, client: TestClient) -> None:
    driver = order_at(ctx.store, ctx.partners, "collected")
    shipment = register(ctx.store, ctx.partners, driver.order.id, courier="easypost-tracking", tracking="1")
    body = corpus("easypost/event-body.json").removesuffix(b"\n")
    headers = {"x-hmac-signature": easypost_signature(EASYPOST_SECRET, body), "content-type": "application/json"}
    response = client.post("/webhooks/couriers/easypost-tracking", content=body, headers=headers)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "accepted"
    (row,) = _inbox(ctx)
    assert row.status == "received"
    assert row.external_id == "evt_1"
    assert bytes(row.raw) == body
    drain(ctx)
    (row,) = _inbox(ctx)
    assert row.status == "handled"
    assert row.order_id == driver.order.id
    recorded = ctx.store.read(lambda s: LogisticsRepository.from_session(s).events(driver.order.id))
    assert [e.canonical for e in recorded][:2] == ["booked", "picked-up"]
    assert [e.courier_code for e in recorded][:2] == ["FedEx:OC", "FedEx:PU"]
    s = ctx.store.read(lambda s: LogisticsRepository.from_session(s).shipment(shipment.id))
    assert s.status == "in-transit"
    assert s.eta is not None
    assert s.pending_stage == "shipped-to-manufacturing"
    handoffs = ctx.store.read(lambda s: OrderRepository.from_session(s).handoffs(driver.order.id))
    assert [(h.from_party, h.to_party) for h in handoffs] == [("st-marys", "easypost-tracking")]


def test_ups_corpus_pushes_with_token_and_user_agent(ctx: HubContext, client: TestClient) -> None:
    driver = order_at(ctx.store, ctx.partners, "collected")
    driver.verify("courier-handoff")
    register(ctx.store, ctx.partners, driver.order.id, courier="ups-track-alert", tracking="1Z204W4R0308071865")
    headers = {"x-api-key": UPS_KEY, "user-agent": "UPSPubSubTrackingService", "content-type": "application/json"}
    out_for_delivery = corpus("ups/trackalert-UPSTrackAlert-TrackingEvent-example1.json")
    delivered = corpus("ups/trackalert-UPSTrackAlert-TrackingEvent-example2.json")
    no_agent = {k: v for k, v in headers.items() if k != "user-agent"}
    assert client.post("/webhooks/couriers/ups-track-alert", content=delivered, headers=no_agent).status_code == 401
    wrong = {**headers, "x-api-key": "nope"}
    assert client.post("/webhooks/couriers/ups-track-alert", content=delivered, headers=wrong).status_code == 401
    for body in (out_for_delivery, delivered):
        assert client.post("/webhooks/couriers/ups-track-alert", content=body, headers=headers).status_code == 202
    drain(ctx)
    recorded = ctx.store.read(lambda s: LogisticsRepository.from_session(s).events(driver.order.id))
    assert [(e.courier_code, e.canonical) for e in recorded] == [("I/OT", "out-for-delivery"), ("D/FS", "delivered")]
    handoffs = ctx.store.read(lambda s: OrderRepository.from_session(s).handoffs(driver.order.id))
    # The delivery implies the pickup UPS never pushed: custody both ways, in order.
    assert [(h.from_party, h.to_party) for h in handoffs] == [
        ("st-marys", "ups-track-alert"),
        ("ups-track-alert", "leiden-cell-factory"),
    ]
    order = ctx.store.read(lambda s: OrderRepository.from_session(s).get(driver.order.id))
    assert order.stage == "shipped-to-manufacturing"  # receipt waits for the factory's own scan


def test_a_ups_push_dated_year_1_is_refused_and_kept(ctx: HubContext, client: TestClient) -> None:
    """Year 0001 overflowed while reading the push: a 500, and the delivery not kept."""
    headers = {"x-api-key": UPS_KEY, "user-agent": "UPSPubSubTrackingService", "content-type": "application/json"}
    body = json.loads(corpus("ups/trackalert-UPSTrackAlert-TrackingEvent-example1.json"))
    body |= {"gmtActivityDate": "00010101", "scheduledDeliveryDate": "20250101"}
    r = client.post("/webhooks/couriers/ups-track-alert", content=json.dumps(body), headers=headers)
    assert r.status_code == 422, r.text
    assert "out of range" in r.text


def test_a_verified_event_whose_id_holds_a_nul_is_kept(ctx: HubContext, client: TestClient) -> None:
    """PostgreSQL refuses NUL in text: the inbox row failed, and a verified delivery was answered
    422 and thrown away. The id is stored with the NUL written out; the raw bytes are kept."""
    body = json.dumps(
        {
            "object": "Event",
            "id": "evt_\u0000abc",
            "description": "tracker.updated",
            "result": {"tracking_code": "1", "status": "in_transit", "tracking_details": []},
        }
    ).encode()
    headers = {"x-hmac-signature": easypost_signature(EASYPOST_SECRET, body), "content-type": "application/json"}
    r = client.post("/webhooks/couriers/easypost-tracking", content=body, headers=headers)
    assert r.status_code < 500, r.text
    rows = ctx.store.read(lambda s: [(m.external_id, m.raw) for m in s.scalars(select(InboxMessage))])
    assert rows == [("evt_\\x00abc", body)]


def test_refusals_disabled_unknown_bad_signature_stale(
    ctx: HubContext, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = event_body("PU", "PLR000000001", utcnow())
    assert client.post("/webhooks/couriers/nobody", content=body).status_code == 404
    assert client.post("/webhooks/couriers/st-marys", content=body).status_code == 404
    forged = signed_headers("whsec_d3JvbmcteWVzLXdyb25nLXNlY3JldC0xMjM0", body)
    assert client.post("/webhooks/couriers/polar-courier", content=body, headers=forged).status_code == 401
    stale = signed_headers(POLAR_SECRET, body, timestamp=int(time.time()) - 301)
    response = client.post("/webhooks/couriers/polar-courier", content=body, headers=stale)
    assert response.status_code == 401
    assert "tolerated" in response.json()["detail"]
    monkeypatch.delenv("POLAR_COURIER_WEBHOOK_SECRET")
    clear_secret_cache()
    disabled = client.post("/webhooks/couriers/polar-courier", content=body, headers=signed_headers(POLAR_SECRET, body))
    assert disabled.status_code == 503
    assert "disabled" in disabled.json()["detail"]
    assert _inbox(ctx) == []  # nothing unverified is stored


def test_same_webhook_three_times_changes_state_once(ctx: HubContext, client: TestClient) -> None:
    driver = order_at(ctx.store, ctx.partners, "collected")
    register(ctx.store, ctx.partners, driver.order.id)
    body = event_body("PU", "PLR000000001", utcnow() - timedelta(minutes=1), location="Rochester")
    headers = signed_headers(POLAR_SECRET, body, webhook_id="msg_pickup_1")
    answers = [client.post("/webhooks/couriers/polar-courier", content=body, headers=headers) for _ in range(3)]
    assert {a.status_code for a in answers} == {202}
    assert len({a.content for a in answers}) == 1
    drain(ctx)
    drain(ctx)
    assert _count(ctx, InboxMessage) == 1
    assert _count(ctx, ShipmentEvent) == 1
    assert len(ctx.store.read(lambda s: OrderRepository.from_session(s).handoffs(driver.order.id))) == 1


@pytest.mark.slow
def test_same_webhook_ten_times_in_parallel_over_http(ctx: HubContext) -> None:
    driver = order_at(ctx.store, ctx.partners, "collected")
    driver.verify("courier-handoff")
    register(ctx.store, ctx.partners, driver.order.id)
    body = event_body("PU", "PLR000000001", utcnow() - timedelta(minutes=1))
    headers = signed_headers(POLAR_SECRET, body, webhook_id="msg_parallel_1")
    runtime = build_runtime(ctx.settings, ctx=ctx)
    with LocalServer(create_app(ctx, runtime)) as server:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url) as http:
                return list(
                    await asyncio.gather(
                        *(
                            http.post("/webhooks/couriers/polar-courier", content=body, headers=headers)
                            for _ in range(10)
                        )
                    )
                )

        answers = asyncio.run(burst())
        assert [a.status_code for a in answers] == [202] * 10
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if ctx.store.read(lambda s: OrderRepository.from_session(s).get(driver.order.id)).stage != "collected":
                break
            time.sleep(0.1)
    assert _count(ctx, InboxMessage) == 1
    assert _count(ctx, ShipmentEvent) == 1
    order = ctx.store.read(lambda s: OrderRepository.from_session(s).get(driver.order.id))
    assert order.stage == "shipped-to-manufacturing"
    transitions = ctx.store.read(lambda s: OrderRepository.from_session(s).transitions(driver.order.id))
    assert [t.to_stage for t in transitions].count("shipped-to-manufacturing") == 1


def test_unknown_tracking_number_is_kept_and_alerted(ctx: HubContext, client: TestClient) -> None:
    body = event_body("PU", "PLR999999999", utcnow())
    assert (
        client.post(
            "/webhooks/couriers/polar-courier", content=body, headers=signed_headers(POLAR_SECRET, body)
        ).status_code
        == 202
    )
    drain(ctx)
    (row,) = _inbox(ctx)
    assert row.status == "rejected"
    assert "PLR999999999" in (row.error or "")
    assert "courier.event-refused" in alert_kinds(ctx.store)


def test_telemetry_batches_and_readings_inside_webhooks(ctx: HubContext, client: TestClient) -> None:
    driver = order_at(ctx.store, ctx.partners, "collected")
    shipment = register(ctx.store, ctx.partners, driver.order.id)
    start = utcnow() - timedelta(hours=1)
    batch = json.dumps(
        {
            "tracking_number": "PLR000000001",
            "logger": "L-77",
            "readings": [{"at": (start + timedelta(minutes=i)).isoformat(), "temperature_c": 5.0} for i in range(30)],
        }
    ).encode()
    headers = signed_headers(POLAR_SECRET, batch)
    answer = client.post("/webhooks/couriers/polar-courier/telemetry", content=batch, headers=headers)
    assert answer.status_code == 202
    assert answer.json()["readings"] == 30
    inside = event_body(
        "IT",
        "PLR000000001",
        start + timedelta(minutes=40),
        logger="L-77",
        readings=[{"at": (start + timedelta(minutes=40)).isoformat(), "temperature_c": 6.0}],
    )
    assert (
        client.post(
            "/webhooks/couriers/polar-courier", content=inside, headers=signed_headers(POLAR_SECRET, inside)
        ).status_code
        == 202
    )
    bad = b'{"tracking_number": "PLR000000001", "logger": "L", "readings": [{"at": "yesterday"}]}'
    refused = client.post(
        "/webhooks/couriers/polar-courier/telemetry", content=bad, headers=signed_headers(POLAR_SECRET, bad)
    )
    assert refused.status_code == 422
    drain(ctx)
    assert ctx.store.read(lambda s: LogisticsRepository.from_session(s).reading_count(shipment.id)) == 31


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_shaped = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["shipment.updated", "x", 3]),
        "data": st.dictionaries(
            st.sampled_from(["tracking_number", "code", "occurred_at", "eta", "readings", "location", "logger"]),
            _json,
            max_size=7,
        ),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=300),
        _json.map(lambda v: json.dumps(v).encode()),
        _shaped.map(lambda v: json.dumps(v).encode()),
    ),
    extra=st.dictionaries(
        st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature", "content-length", "x-hmac-signature"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
        max_size=3,
    ),
    sign=st.booleans(),
)
def test_fuzzed_bodies_and_headers_never_500(
    client: TestClient, body: bytes, extra: dict[str, str], sign: bool
) -> None:
    headers = signed_headers(POLAR_SECRET, body) if sign else {}
    headers.update(extra)
    for path in ("/webhooks/couriers/polar-courier", "/webhooks/couriers/polar-courier/telemetry"):
        try:
            response = client.post(path, content=body, headers=headers)
        except (httpx.LocalProtocolError, ValueError):
            continue  # the client itself refuses to send an impossible header
        assert response.status_code < 500 or (response.status_code == 503 and sign is False), response.text
        assert response.status_code in (202, 400, 401, 413, 422)


def test_fuzzed_signed_bodies_are_processed_without_crash(ctx: HubContext, client: TestClient) -> None:
    driver = order_at(ctx.store, ctx.partners, "collected")
    register(ctx.store, ctx.partners, driver.order.id)
    odd = [
        {
            "type": "shipment.updated",
            "data": {"tracking_number": "PLR000000001", "code": "??", "occurred_at": "2026-01-01T00:00:00Z"},
        },
        {
            "type": "shipment.updated",
            "data": {"tracking_number": "PLR000000001", "code": "PU", "occurred_at": "2099-01-01T00:00:00Z"},
        },
        {
            "type": "shipment.updated",
            "data": {
                "tracking_number": "PLR000000001",
                "code": "DL",
                "occurred_at": "2026-01-01T00:00:00+05:00",
                "readings": [{"at": "2026-01-01T00:00:00Z", "temperature_c": 150}],
            },
        },
        {"type": "other.event", "data": {}},
    ]
    for item in odd:
        body = json.dumps(item).encode()
        assert (
            client.post(
                "/webhooks/couriers/polar-courier", content=body, headers=signed_headers(POLAR_SECRET, body)
            ).status_code
            == 202
        )
    drain(ctx)
    statuses = sorted(m.status for m in _inbox(ctx))
    assert statuses == ["handled", "handled", "handled", "ignored"]
    assert "courier.unknown-code" in alert_kinds(ctx.store, driver.order.id)


def test_direct_lane_keeps_metrics_errors_and_the_router_for_other_methods(
    ctx: HubContext, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Webhooks skip FastAPI's router (hub.api.direct) but are answered, counted and refused as
    before; other methods on the same path still get the router's 405, and a chunked body larger
    than the cap is refused while it arrives."""
    from fastapi.routing import APIRouter

    from adapters.couriers.endpoints import MAX_BODY

    routed: list[str] = []
    through_router = APIRouter.__call__

    async def spy(self, scope, receive, send):  # type: ignore[no-untyped-def]
        routed.append(f"{scope['method']} {scope['path']}")
        await through_router(self, scope, receive, send)

    monkeypatch.setattr(APIRouter, "__call__", spy)
    body = event_body("PU", "PLR000000001", utcnow())
    delivered = client.post(
        "/webhooks/couriers/polar-courier", content=body, headers=signed_headers(POLAR_SECRET, body)
    )
    assert delivered.status_code == 202
    unknown = client.post("/webhooks/couriers/nobody", content=body)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")
    assert client.get("/webhooks/couriers/polar-courier").status_code == 405

    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"x" * 65536

    too_large = client.post(
        "/webhooks/couriers/polar-courier", content=chunks(), headers=signed_headers(POLAR_SECRET, body)
    )
    assert too_large.status_code == 413
    assert routed == ["GET /webhooks/couriers/polar-courier"]  # only the method the lane does not serve
    metrics = client.get("/metrics").text
    assert 'route="/webhooks/couriers/{partner}",status="202"' in metrics
    assert 'route="/webhooks/couriers/{partner}",status="404"' in metrics
    assert len(_inbox(ctx)) == 1


def test_a_repeat_of_a_refused_delivery_is_refused_the_same_way(ctx: HubContext, client: TestClient) -> None:
    body = b'{"not": "a tracking event"'
    headers = signed_headers(POLAR_SECRET, body)
    first = client.post("/webhooks/couriers/polar-courier", content=body, headers=headers)
    again = client.post("/webhooks/couriers/polar-courier", content=body, headers=headers)
    assert 400 <= first.status_code < 500
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert len(_inbox(ctx)) == 1


def test_refused_deliveries_are_counted_and_logged_per_partner(
    ctx: HubContext, client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The courier rotated its secret, the hub did not: every delivery got 401 and the operator saw
    only `POST /webhooks/couriers/{partner} -> 401` (no partner, no reason) and a route counter."""
    from adapters.couriers import endpoints
    from hub.api.metrics import REGISTRY

    def refused(reason: str) -> float:
        value = REGISTRY.get_sample_value(
            "cgthub_webhook_refused_total", {"partner": "polar-courier", "reason": reason}
        )
        return value or 0.0

    monkeypatch.setattr(endpoints, "_refusal_log", {})
    before = {r: refused(r) for r in ("signature", "stale", "disabled")}
    body = event_body("PU", "PLR000000001", utcnow())
    rotated = signed_headers("whsec_cm90YXRlZC1hdC10aGUtY291cmllci0xMjM0NTY=", body)
    caplog.set_level("WARNING", logger="adapters.couriers.endpoints")
    for _ in range(3):
        assert client.post("/webhooks/couriers/polar-courier", content=body, headers=rotated).status_code == 401
    stale = signed_headers(POLAR_SECRET, body, timestamp=int(time.time()) - 301)
    assert client.post("/webhooks/couriers/polar-courier", content=body, headers=stale).status_code == 401
    monkeypatch.delenv("POLAR_COURIER_WEBHOOK_SECRET")
    clear_secret_cache()
    assert client.post("/webhooks/couriers/polar-courier", content=body, headers=rotated).status_code == 503
    assert refused("signature") - before["signature"] == 3
    assert refused("stale") - before["stale"] == 1
    assert refused("disabled") - before["disabled"] == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "adapters.couriers.endpoints"]
    signature_lines = [line for line in lines if "polar-courier refused (signature)" in line]
    assert len(signature_lines) == 1  # one line a minute per partner and reason, not one per request
    assert "secret" in signature_lines[0]
    assert any("polar-courier refused (stale)" in line for line in lines)
    assert any("polar-courier refused (disabled)" in line for line in lines)
    metrics = client.get("/metrics").text
    assert 'cgthub_webhook_refused_total{partner="polar-courier",reason="signature"}' in metrics
