"""A local specialty courier (Polar-style REST bookings, Standard Webhooks pushes), for the tests and
the demo: a real HTTP service on an ephemeral port, and a sender that signs its webhooks the way a
Standard Webhooks courier does.

Bookings are idempotent by ``Idempotency-Key`` (a repeat gets the same booking; the same key with
another body is refused with 422). ``fail_next`` answers that many requests with 503 first.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

from adapters.couriers.signatures import standard_signature
from hub import canonical


@dataclass
class CourierSandbox:
    token: str
    transit: timedelta = timedelta(hours=20)
    fail_next: int = 0
    bookings: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: int = 0
    _bodies: dict[str, str] = field(default_factory=dict)
    # Like a real courier, tracking numbers never repeat across runs (a demo database outlives them).
    _numbers: itertools.count[int] = field(
        default_factory=lambda: itertools.count(int(time.time() * 1000) % 900_000_000 + 1)
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        app = FastAPI(title="courier sandbox")

        @app.post("/v2/bookings")
        async def book(
            request: Request,
            authorization: str = Header(default=""),
            idempotency_key: str = Header(default=""),
        ) -> JSONResponse:
            body = await request.body()
            with self._lock:
                self.requests += 1
                if authorization != f"Bearer {self.token}":
                    return JSONResponse({"error": "unauthorised"}, status_code=401)
                if not idempotency_key:
                    return JSONResponse({"error": "Idempotency-Key is required"}, status_code=400)
                if self.fail_next > 0:
                    self.fail_next -= 1
                    return JSONResponse({"error": "try again"}, status_code=503)
                known = self.bookings.get(idempotency_key)
                if known is not None:
                    if self._bodies[idempotency_key] != canonical.sha256_hex(body):
                        return JSONResponse({"error": "Idempotency-Key reused for another booking"}, status_code=422)
                    return JSONResponse(known, status_code=200)
                data = canonical.loads(body)
                pickup = datetime.fromisoformat(data["pickup_after"])
                booking = {
                    "booking_id": f"BK-{uuid.uuid4().hex[:10].upper()}",
                    "tracking_number": f"PLR{next(self._numbers):09d}",
                    "eta": (pickup + self.transit).astimezone(UTC).isoformat(),
                    "reference": data["reference"],
                }
                self.bookings[idempotency_key] = booking
                self._bodies[idempotency_key] = canonical.sha256_hex(body)
                return JSONResponse(booking, status_code=201)

        return app


def event_body(
    code: str,
    tracking_number: str,
    occurred_at: datetime,
    *,
    eta: datetime | None = None,
    location: str | None = None,
    signed_by: str | None = None,
    logger: str | None = None,
    readings: list[dict[str, Any]] | None = None,
) -> bytes:
    data: dict[str, Any] = {"tracking_number": tracking_number, "code": code, "occurred_at": occurred_at.isoformat()}
    if eta is not None:
        data["eta"] = eta.isoformat()
    if location:
        data["location"] = location
    if signed_by:
        data["signed_by"] = signed_by
    if logger:
        data["logger"] = logger
    if readings:
        data["readings"] = readings
    return canonical.dumpb({"type": "shipment.updated", "timestamp": occurred_at.isoformat(), "data": data})


def signed_headers(
    secret: str, body: bytes, *, webhook_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for one delivery."""
    wid = webhook_id or f"msg_{uuid.uuid4().hex}"
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": wid,
        "webhook-timestamp": str(ts),
        "webhook-signature": standard_signature(secret, wid, ts, body),
        "content-type": "application/json",
    }


def push(client: httpx.Client, url: str, secret: str, body: bytes, *, webhook_id: str | None = None) -> httpx.Response:
    """Deliver one signed webhook to the hub (as the courier would)."""
    return client.post(url, content=body, headers=signed_headers(secret, body, webhook_id=webhook_id))
