"""The logistics part of `make demo`, over real HTTP on loopback:

the hub's API (with its relay, consumers and outbound dispatcher) runs on an ephemeral port next to
a local specialty courier (REST bookings, Standard Webhooks pushes) and a local EU ICS2 customs
service (SOAP 1.2). One fresh-apheresis order travels St Mary's (US) → Leiden (NL): the hub books
the courier, receives the signed pickup and delivery webhooks, a telemetry batch with one short
excursion, lodges and follows the customs declaration, and the timeline shows the viability
countdown. The webhook secret and courier token are generated for this run only.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx

from adapters.couriers.endpoints import clear_secret_cache
from adapters.couriers.sandbox import CourierSandbox, event_body, push, signed_headers
from adapters.customs.sandbox import CustomsSandbox
from adapters.local_server import LocalServer
from hub.api.app import create_app
from hub.context import HubContext
from hub.db.types import utcnow
from hub.logistics.repository import LogisticsRepository
from hub.orders.repository import OrderRepository
from hub.orders.schemas import OrderView, Sites
from hub.runtime import build_runtime, logistics_background, logistics_ports


def _wait(what: str, check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        time.sleep(0.05)


def logistics_journey(ctx: HubContext, stamp: str, say: Callable[[str], None]) -> OrderView:
    from hub.demo import Journey, place

    secret = "whsec_" + secrets.token_urlsafe(24)
    token = secrets.token_urlsafe(24)
    os.environ["POLAR_COURIER_WEBHOOK_SECRET"] = secret  # this process only, generated per run
    os.environ["POLAR_COURIER_API_TOKEN"] = token
    clear_secret_cache()
    courier = CourierSandbox(token=token, transit=timedelta(hours=18))
    customs = CustomsSandbox(script=("A1", "R1"))
    sites = Sites(
        collection="st-marys", manufacturing="leiden-cell-factory", treatment="st-marys", courier="polar-courier"
    )
    order = place(ctx, "car-t-fresh", f"DEMO-{stamp}-3", f"MRN-{stamp}-3", "Okoye", "Nia", "1980-05-17", sites)
    say(f"4. Logistics: order {order.placer_number} → CoI {order.coi_eye_readable} (St Mary's, US → Leiden, NL)")
    j = Journey(ctx, order, "hub.coordinator", {"st-marys": "apheresis.nurse", "leiden-cell-factory": "goods.in"})
    j.advance("collection-scheduled")
    j.verify("collection", site="st-marys")
    j.advance("collected")
    say("   Collected: the 48 h viability clock is running")

    with LocalServer(courier.app()) as courier_srv, LocalServer(customs.app()) as customs_srv:
        ctx.settings.logistics.sweep_s = 1.0
        ctx.settings.logistics.customs_poll_s = 0.5
        ctx.settings.logistics.outbound_poll_s = 0.1
        runtime = build_runtime(ctx.settings, ctx=ctx)
        ports = logistics_ports(ctx, {"polar-courier": courier_srv.url + "/v2", "eu-customs-ics2": customs_srv.url})
        runtime.background = [logistics_background(ctx, ports)]
        with LocalServer(create_app(ctx, runtime)) as hub_srv, httpx.Client(base_url=hub_srv.url, timeout=10) as http:
            auth = {"authorization": f"Bearer {ctx.settings.operator_token.get_secret_value()}"}
            booked = http.post(
                f"/logistics/orders/{order.id}/shipments", json={"customs_partner": "eu-customs-ics2"}, headers=auth
            )
            booked.raise_for_status()
            shipment_id = booked.json()["id"]

            def shipment() -> Any:
                return ctx.store.read(lambda s: LogisticsRepository.from_session(s).shipment(shipment_id))

            _wait("the courier booking", lambda: shipment().status == "booked")
            s = shipment()
            say(f"   Courier booked over HTTP: tracking {s.tracking_number}, ETA {s.eta:%Y-%m-%d %H:%M}Z")
            tracking = s.tracking_number
            webhook = "/webhooks/couriers/polar-courier"

            j.verify("courier-handoff", site="polar-courier")
            picked_up_at = utcnow()
            pickup = event_body("PU", tracking, picked_up_at, location="Rochester NY US", eta=s.eta)
            answer = push(http, webhook, secret, pickup, webhook_id=f"msg_{stamp}_pickup")
            say(f"   Pickup webhook (Standard Webhooks, signed): HTTP {answer.status_code}")
            again = push(http, webhook, secret, pickup, webhook_id=f"msg_{stamp}_pickup")
            forged = http.post(webhook, content=pickup, headers=signed_headers("whsec_" + "x" * 32, pickup))
            say(f"   Same event again: HTTP {again.status_code}; forged signature: HTTP {forged.status_code}")

            def stage() -> str:
                return ctx.store.read(lambda s: OrderRepository.from_session(s).get(order.id)).stage

            _wait("the pickup to move the journey", lambda: stage() == "shipped-to-manufacturing")
            say("   → custody St Mary's → Polar recorded, stage shipped-to-manufacturing")

            # The demo compresses the 18 h leg into seconds: one reading every 50 ms since pickup,
            # two of them above 8 °C (an excursion far inside the 15 tolerated minutes).
            temps = [5.1, 5.3, 5.6, 6.0, 9.4, 9.6, 6.8, 5.9, 5.4, 5.2, 5.0, 4.9]
            time.sleep(0.05 * len(temps))
            start = picked_up_at
            batch = {
                "tracking_number": tracking,
                "logger": "TT4-0042",
                "readings": [
                    {"at": (start + timedelta(milliseconds=50 * i)).isoformat(), "temperature_c": t}
                    for i, t in enumerate(temps)
                ],
            }
            body = httpx.Request("POST", "/", json=batch).content
            answer = http.post(webhook + "/telemetry", content=body, headers=signed_headers(secret, body))
            say(f"   Telemetry batch of {len(temps)} readings: HTTP {answer.status_code}")
            _wait(
                "the temperature batch",
                lambda: bool(ctx.store.read(lambda s: LogisticsRepository.from_session(s).excursions(order.id))),
            )

            def declaration() -> Any:
                return ctx.store.read(lambda s: LogisticsRepository.from_session(s).declaration_for(shipment_id))

            _wait("customs clearance", lambda: declaration() is not None and declaration().status == "released")
            d = declaration()
            say(f"   Customs (ICS2 over SOAP): declaration {d.functional_reference} lodged, MRN {d.mrn}, {d.status}")

            j.verify("manufacturing-receipt", site="leiden-cell-factory")
            delivered = event_body("DL", tracking, utcnow(), location="Leiden NL", signed_by="goods-in")
            answer = push(http, webhook, secret, delivered)
            say(f"   Delivery webhook: HTTP {answer.status_code}")
            _wait("the delivery to move the journey", lambda: stage() == "received-at-manufacturing")
            say("   → custody Polar → Leiden recorded, stage received-at-manufacturing (receipt verified)")
            alerts = http.get("/alerts", params={"order": order.id}, headers=auth).json()
            for alert in alerts:
                say(f"   ALERT [{alert['severity']}] {alert['kind']}: {alert['message']}")
    j.order = ctx.store.read(lambda s: _view(s, order.id))
    return j.order


def _view(session: Any, order_id: str) -> OrderView:
    from hub.orders.service import view

    return view(OrderRepository.from_session(session).get(order_id))
