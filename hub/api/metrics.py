"""Prometheus metrics. Labels carry route templates and outcomes, never identifiers or PHI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.requests import ClientDisconnect

log = logging.getLogger("hub.http")
CLIENT_CLOSED = 499

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter("cgthub_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=REGISTRY)
HTTP_LATENCY = Histogram(
    "cgthub_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
OUTBOX_PENDING = Gauge("cgthub_outbox_pending", "Outbox events not yet confirmed by the bus", registry=REGISTRY)
DEAD_LETTERS = Gauge("cgthub_dead_letters", "Events dead-lettered and not replayed", registry=REGISTRY)
AUDIT_ENTRIES = Gauge("cgthub_audit_entries", "Length of the audit chain", registry=REGISTRY)
HL7V2_OUTBOUND = Gauge(
    "cgthub_hl7v2_outbound_messages",
    "Outbound HL7 v2 messages not delivered, by partner and status (pending, dead, quarantined)",
    ["partner", "status"],
    registry=REGISTRY,
)
ALERTS_OPEN = Gauge("cgthub_alerts_open", "Alerts not yet acknowledged, by severity", ["severity"], registry=REGISTRY)
# Partner ids here come from the loaded profiles only (an unknown partner is a 404 before this), so
# the label set stays bounded whatever a caller sends.
WEBHOOK_REFUSED = Counter(
    "cgthub_webhook_refused_total",
    "Inbound webhook deliveries refused before storage (reason: signature, stale, disabled)",
    ["partner", "reason"],
    registry=REGISTRY,
)


class ObserveMiddleware:
    """Counts and times requests by route template (never the path or query: they can carry
    identifiers). A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` costs a task group
    and memory streams per request (measured: the largest single overhead on the webhook path)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        responded = False

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # The client went away before its request ended (mid-body): its doing, not a server
            # error, so neither a 500 in the counters nor a traceback in the log; nobody is left
            # to answer. 499 is nginx's "client closed request".
            status = CLIENT_CLOSED
        except asyncio.CancelledError:
            # Still running when the shutdown grace (CGTHUB_SHUTDOWN_GRACE_S) ran out: uvicorn
            # cancels this, the request's own task, and would log the cancellation as a crash with
            # its traceback. The client is told to retry instead; nothing awaits this task's result,
            # so the cancellation ends here.
            log.warning("%s request still running at the end of the shutdown grace: cancelled", scope.get("method"))
            if not responded:
                status = 503
                with contextlib.suppress(Exception):
                    await _unavailable(send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - started
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(method, template, str(status)).inc()
            HTTP_LATENCY.labels(method, template).observe(elapsed)
            if log.isEnabledFor(logging.INFO):
                log.info("%s %s -> %d in %.1f ms", method, template, status, elapsed * 1000)


async def _unavailable(send: Any) -> None:
    body = b'{"status": 503, "detail": "the server is stopping; retry"}'
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 503, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
