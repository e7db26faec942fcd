"""GET /alerts with filters, acknowledgement by a named person, escalation when nobody does."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from hub.alerts.service import AlertService
from hub.api.app import create_app
from hub.context import HubContext
from hub.db.models import Alert
from hub.db.types import utcnow
from hub.logistics.policy import Policy
from hub.logistics.service import raise_alert
from hub.settings import DEV_OPERATOR_TOKEN
from tests.logistics_support import context, drain, events

AUTH = {"authorization": f"Bearer {DEV_OPERATOR_TOKEN}"}


@pytest.fixture
def ctx(db_url: str) -> Iterator[HubContext]:
    c = context(db_url)
    try:
        yield c
    finally:
        c.store.dispose()


def _raise(ctx: HubContext, severity: str, kind: str, order: str | None = None) -> None:
    ctx.store.run(lambda w: raise_alert(w, order, severity, kind, f"test {kind}"))


def test_list_filter_acknowledge_and_escalate(ctx: HubContext) -> None:
    _raise(ctx, "critical", "temperature.excursion", "order-1")
    _raise(ctx, "warning", "shipment.customs-hold", "order-2")
    _raise(ctx, "info", "shipment.note", "order-2")
    drain(ctx)
    with TestClient(create_app(ctx)) as client:
        assert client.get("/alerts").status_code == 401
        everything = client.get("/alerts", headers=AUTH).json()
        assert len(everything) == 3
        critical = client.get("/alerts", params={"severity": "critical"}, headers=AUTH).json()
        assert [a["kind"] for a in critical] == ["temperature.excursion"]
        assert len(client.get("/alerts", params={"order": "order-2"}, headers=AUTH).json()) == 2
        assert len(client.get("/alerts", params={"kind": "shipment."}, headers=AUTH).json()) == 2
        assert client.get("/alerts", params={"since": "2000-01-01T00:00:00"}, headers=AUTH).status_code == 422

        # Nobody acknowledged the critical one for 20 minutes: level 1. The warning is not due yet.
        ctx.store.run(lambda w: w.session.execute(update(Alert).values(raised_at=utcnow() - timedelta(minutes=20))))
        assert ctx.store.run(lambda w: AlertService(w).escalate_due(Policy())) == 1
        assert ctx.store.run(lambda w: AlertService(w).escalate_due(Policy())) == 0
        assert len(events(ctx.store, "alert.escalated")) == 1
        (crit,) = client.get("/alerts", params={"severity": "critical"}, headers=AUTH).json()
        assert crit["escalation_level"] == 1

        answer = client.post(f"/alerts/{crit['id']}/acknowledge", json={"by": "Dr. Jane Quality"}, headers=AUTH)
        assert answer.status_code == 200
        assert answer.json()["acknowledged_by"] == "Dr. Jane Quality"
        again = client.post(f"/alerts/{crit['id']}/acknowledge", json={"by": "Someone Else"}, headers=AUTH)
        assert again.status_code == 409
        assert client.post("/alerts/nope/acknowledge", json={"by": "Dr. X Y"}, headers=AUTH).status_code == 404
        opened = client.get("/alerts", params={"state": "open"}, headers=AUTH).json()
        assert crit["id"] not in {a["id"] for a in opened}
    ctx.store.run(lambda w: w.session.execute(update(Alert).values(raised_at=utcnow() - timedelta(hours=10))))
    assert ctx.store.run(lambda w: AlertService(w).escalate_due(Policy())) == 1  # the warning; acked one stays
