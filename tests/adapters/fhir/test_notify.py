"""Subscription notifications: recorded by the bus consumer, delivered signed, retried with
backoff, recorded per attempt, given up on explicitly, replayable."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest
import respx
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks import Webhook

from adapters.fhir.notify import LEASE, DeliveryWorker, backoff, replay
from adapters.fhir.webhooks import sign
from hub.api.fhir_service import endpoint_registered
from hub.context import HubContext
from hub.db.models import Lease, OutboxEvent
from hub.db.models_fhirapi import SubscriptionAttempt, SubscriptionDelivery
from hub.db.uow import Store
from hub.fhirstore.repository import ResourceRepository
from hub.orders.schemas import Advance
from hub.orders.service import OrderService
from hub.partners.loader import PartnerDirectory
from hub.runtime import build_runtime
from hub.settings import Settings
from tests.hub.api.conftest import WEBHOOK_ENV, WEBHOOK_SECRET, ClientKey, bearer
from tests.hub.api.fhir_data import order

HOOK = "http://127.0.0.1:9/hook"


def _subscribe(api: TestClient, h: dict[str, str], criteria: str, endpoint: str = HOOK) -> str:
    r = api.post(
        "/fhir/Subscription",
        json={
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "follow my orders",
            "criteria": criteria,
            "channel": {
                "type": "rest-hook",
                "endpoint": endpoint,
                "payload": "application/fhir+json",
                "header": ["X-Partner-Token: abc123"],
            },
        },
        headers=h,
    )
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "active"
    return str(r.json()["id"])


def _drain(settings: Settings, store: Store, partners: PartnerDirectory) -> int:
    async def go() -> int:
        runtime = build_runtime(settings, ctx=HubContext(settings, store, partners))
        await runtime.start(run_relay=False, run_workers=False)
        try:
            return await runtime.relay.drain()
        finally:
            await runtime.stop()

    return asyncio.run(go())


def _deliveries(store: Store) -> list[SubscriptionDelivery]:
    return store.read(lambda s: list(s.scalars(select(SubscriptionDelivery).order_by(SubscriptionDelivery.created_at))))


def test_backoff_is_capped() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert backoff(30) == 300.0


def test_signature_matches_the_reference_library() -> None:
    body = b'{"resourceType":"Task"}'
    sig = sign(WEBHOOK_SECRET, "msg_1", 1_700_000_000, body)
    wh = Webhook(WEBHOOK_SECRET)
    assert sig in wh.sign(
        "msg_1", __import__("datetime").datetime.fromtimestamp(1_700_000_000, __import__("datetime").UTC), body.decode()
    )


@respx.mock
def test_order_events_notify_signed_and_retry(
    api: TestClient,
    client_keys: dict[str, ClientKey],
    store: Store,
    fhir_partners: PartnerDirectory,
    fhir_settings: Settings,
) -> None:
    h = bearer(api, client_keys["st-marys"])
    sub_sr = _subscribe(api, h, "ServiceRequest")
    sub_task = _subscribe(api, h, "Task?status=completed")
    _subscribe(api, bearer(api, client_keys["lakeside-hospital"]), "ServiceRequest")  # not a participant
    sr = api.post("/fhir/ServiceRequest", json=order(), headers=h).json()
    store.run(
        lambda w: OrderService(w, fhir_partners).advance(Advance(order_id=sr["id"], to_stage="collection-scheduled"))
    )
    _drain(fhir_settings, store, fhir_partners)
    deliveries = _deliveries(store)
    by_sub = {d.subscription_id for d in deliveries}
    assert by_sub == {sub_sr, sub_task}  # lakeside takes no part in the order: nothing for it
    assert {d.focus for d in deliveries if d.subscription_id == sub_sr} == {f"ServiceRequest/{sr['id']}"}
    assert {d.focus for d in deliveries if d.subscription_id == sub_task} >= {
        f"Task/{sr['id']}-s00",
        f"Task/{sr['id']}-s01",
    }

    received: list[httpx.Request] = []
    calls = {"n": 0}

    def hook(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(503, text="busy")
        received.append(request)
        return httpx.Response(204)

    respx.post(HOOK).mock(side_effect=hook)
    worker = DeliveryWorker(store, fhir_partners, backoff_base_s=0.0)
    for _ in range(6):
        asyncio.run(worker.run_once())
    final = _deliveries(store)
    sr_deliveries = [d for d in final if d.subscription_id == sub_sr]
    # the accept and the stage change: the older one is skipped (superseded), the newer delivered
    assert sorted(d.status for d in sr_deliveries) == ["delivered", "skipped"] or all(
        d.status == "delivered" for d in sr_deliveries
    )
    assert all(d.status in ("delivered", "skipped") for d in final)
    attempts = store.read(lambda s: list(s.scalars(select(SubscriptionAttempt))))
    assert any(a.status_code == 503 for a in attempts)
    assert any(a.status_code == 204 for a in attempts)
    wh = Webhook(WEBHOOK_SECRET)
    for request in received:
        headers = {k: v for k, v in request.headers.items()}
        wh.verify(request.content, headers)  # raises if the signature is wrong
        assert headers["x-partner-token"] == "abc123"
        doc = json.loads(request.content)
        assert doc["resourceType"] in ("ServiceRequest", "Task")
        if doc["resourceType"] == "ServiceRequest":
            assert doc["id"] == sr["id"]


@respx.mock
def test_gives_up_then_replays(
    api: TestClient,
    client_keys: dict[str, ClientKey],
    store: Store,
    fhir_partners: PartnerDirectory,
    fhir_settings: Settings,
) -> None:
    h = bearer(api, client_keys["st-marys"])
    _subscribe(api, h, "ServiceRequest")
    api.post("/fhir/ServiceRequest", json=order(), headers=h)
    _drain(fhir_settings, store, fhir_partners)
    route = respx.post(HOOK).mock(return_value=httpx.Response(500))
    worker = DeliveryWorker(store, fhir_partners, backoff_base_s=0.0, max_attempts=3)
    for _ in range(4):
        asyncio.run(worker.run_once())
    [d] = _deliveries(store)
    assert d.status == "failed"
    assert d.attempts == 3
    assert route.call_count == 3
    events = store.read(lambda s: list(s.scalars(select(OutboxEvent.event_type))))
    assert "subscription.delivery_failed" in events
    route.mock(return_value=httpx.Response(200))
    replay(store, d.id)
    asyncio.run(worker.run_once())
    [d] = _deliveries(store)
    assert d.status == "delivered"


class _Receiver(BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        _Receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Receiver.got = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cgt-hook"
    finally:
        server.shutdown()


@pytest.mark.slow
def test_delivers_to_a_real_endpoint(
    api: TestClient,
    client_keys: dict[str, ClientKey],
    store: Store,
    fhir_partners: PartnerDirectory,
    fhir_settings: Settings,
    receiver: str,
) -> None:
    h = bearer(api, client_keys["st-marys"])
    _subscribe(api, h, "ServiceRequest", endpoint=receiver)
    sr = api.post("/fhir/ServiceRequest", json=order(), headers=h).json()
    _drain(fhir_settings, store, fhir_partners)
    asyncio.run(DeliveryWorker(store, fhir_partners).run_once())
    assert len(_Receiver.got) == 1
    headers, body = _Receiver.got[0]
    Webhook(WEBHOOK_SECRET).verify(body, headers)
    assert json.loads(body)["id"] == sr["id"]


def test_subscription_rules(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    bad = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "x",
        "criteria": "Patient",
        "channel": {"type": "email", "endpoint": "https://evil.example/hook"},
    }
    r = api.post("/fhir/Subscription", json=bad, headers=h)
    assert r.status_code == 422
    where = {e for i in r.json()["issue"] for e in i.get("expression", [])}
    assert {"Subscription.channel.type", "Subscription.channel.endpoint", "Subscription.criteria"} <= where


@pytest.mark.parametrize(
    ("endpoint", "registered", "allowed"),
    [
        ("http://127.0.0.1:8080/hook", "http://127.0.0.1", False),  # another port
        ("http://127.0.0.1/hook", "http://127.0.0.1", True),
        ("http://127.0.0.1:80/hook", "http://127.0.0.1", True),
        ("http://127.0.0.1.evil.example/hook", "http://127.0.0.1", False),
        ("http://127.0.0.1@evil.example/hook", "http://127.0.0.1", False),
        ("http://evil.example@127.0.0.1/hook", "http://127.0.0.1", False),  # userinfo, even to the host
        ("https://127.0.0.1/hook", "http://127.0.0.1", False),  # another scheme
        ("https://Hospital.example/hooks/cgt", "https://hospital.example/hooks", True),
        ("https://hospital.example/hooks", "https://hospital.example/hooks/", True),
        ("https://hospital.example/hooks-of-someone-else", "https://hospital.example/hooks", False),
        ("https://hospital.example:notaport/hooks", "https://hospital.example/hooks", False),
        ("http://127.0.0.1:8080/hook", "http://127.0.0.1:*", True),  # a development endpoint
        ("http://127.0.0.1.evil.example:8080/hook", "http://127.0.0.1:*", False),
    ],
)
def test_an_endpoint_must_be_under_a_registered_url(endpoint: str, registered: str, allowed: bool) -> None:
    assert endpoint_registered(endpoint, registered) is allowed


def _subscription_body(endpoint: str, header: list[Any]) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "follow my orders",
        "criteria": "ServiceRequest",
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json", "header": header},
    }


def _store_header(store: Store, sid: str, line: str) -> None:
    """Put a header line into a stored Subscription, as one stored before lines were checked."""

    def job(work: Any) -> None:
        repo = ResourceRepository.for_work(work)
        content = dict(repo.read("Subscription", sid).content)
        content["channel"] = {**content["channel"], "header": [line]}
        repo.update(work, content)

    store.run(job)


@respx.mock
def test_one_unsendable_delivery_does_not_resend_the_others(
    api: TestClient,
    client_keys: dict[str, ClientKey],
    store: Store,
    fhir_partners: PartnerDirectory,
    fhir_settings: Settings,
) -> None:
    """A non-ASCII header made httpx raise UnicodeEncodeError: the round failed before recording,
    and every other delivery of the batch, already POSTed, was sent again on every poll."""
    good, bad = "http://127.0.0.1:9/good", "http://127.0.0.1:9/bad"
    h = bearer(api, client_keys["st-marys"])
    _subscribe(api, h, "ServiceRequest", endpoint=good)
    bad_sub = _subscribe(api, h, "ServiceRequest", endpoint=bad)
    _store_header(store, bad_sub, "X-Partner-Token: café")
    api.post("/fhir/ServiceRequest", json=order(), headers=h)
    _drain(fhir_settings, store, fhir_partners)
    good_route = respx.post(good).mock(return_value=httpx.Response(204))
    bad_route = respx.post(bad).mock(return_value=httpx.Response(204))
    worker = DeliveryWorker(store, fhir_partners, backoff_base_s=0.0)
    for _ in range(3):
        asyncio.run(worker.run_once())
    assert good_route.call_count == 1
    assert bad_route.call_count == 0
    by_sub = {d.subscription_id: d for d in _deliveries(store)}
    assert by_sub[bad_sub].attempts == 3
    assert "Subscription.channel.header" in (by_sub[bad_sub].last_error or "")
    assert [d.status for s, d in by_sub.items() if s != bad_sub] == ["delivered"]


@respx.mock
def test_an_invalid_secret_fails_each_delivery_and_is_recorded(
    api: TestClient,
    client_keys: dict[str, ClientKey],
    store: Store,
    fhir_partners: PartnerDirectory,
    fhir_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = bearer(api, client_keys["st-marys"])
    _subscribe(api, h, "ServiceRequest")
    api.post("/fhir/ServiceRequest", json=order(), headers=h)
    _drain(fhir_settings, store, fhir_partners)
    monkeypatch.setenv(WEBHOOK_ENV, "whsec_!!!notb64")  # the operator broke the secret afterwards
    route = respx.post(HOOK).mock(return_value=httpx.Response(204))
    asyncio.run(DeliveryWorker(store, fhir_partners, backoff_base_s=0.0).run_once())  # no exception
    assert route.call_count == 0
    [d] = _deliveries(store)
    assert (d.status, d.attempts, d.last_error) == ("pending", 1, "not sent: ValueError")
    attempts = store.read(lambda s: list(s.scalars(select(SubscriptionAttempt))))
    assert [a.error for a in attempts] == ["not sent: ValueError"]


@pytest.mark.parametrize(
    "line",
    [
        "X-Partner-Token: café",
        "X-Partner-Token: a\r\nX-Injected: 1",
        "no colon here",
        "Bad Name: x",
        ": no name",
        "Host: other.example",
        "webhook-signature: v1,forged",
        "X-CGT-Focus: Task/1",
        42,
    ],
)
def test_unsendable_header_lines_are_refused(api: TestClient, client_keys: dict[str, ClientKey], line: Any) -> None:
    h = bearer(api, client_keys["st-marys"])
    r = api.post("/fhir/Subscription", json=_subscription_body(HOOK, ["X-Ok: 1", line]), headers=h)
    assert r.status_code == 422, r.text
    where = {e for i in r.json()["issue"] for e in i.get("expression", [])}
    assert "Subscription.channel.header[1]" in where


def test_an_invalid_webhook_secret_refuses_the_subscription(
    api: TestClient, client_keys: dict[str, ClientKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, "whsec_!!!notb64")
    h = bearer(api, client_keys["st-marys"])
    r = api.post("/fhir/Subscription", json=_subscription_body(HOOK, []), headers=h)
    assert r.status_code == 422, r.text
    assert "webhook signing secret cannot be used" in r.text


def test_the_delivery_lease_is_released_on_shutdown(store: Store, fhir_partners: PartnerDirectory) -> None:
    """A stopped worker gives its lease up, as the relay and the HL7 sender do: the next hub (or
    another process) delivers at once instead of after the lease expires."""
    stopping = DeliveryWorker(store, fhir_partners, holder="stopping")

    async def one_round_then_stop() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(stopping.run(stop))
        while await store.read_async(lambda s: s.get(Lease, LEASE)) is None:  # it took the lease
            await asyncio.sleep(0.01)
        stop.set()
        await running

    asyncio.run(one_round_then_stop())
    assert store.read(lambda s: s.get(Lease, LEASE)) is None
    assert store.run(DeliveryWorker(store, fhir_partners, holder="next")._lease_job()) is True
