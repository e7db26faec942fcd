"""Prometheus metrics. Labels carry route templates and outcomes, never identifiers or PHI."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
