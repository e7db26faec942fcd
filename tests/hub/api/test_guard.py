"""Input no database can store (a NUL character) is the sender's mistake: a 4xx that says where,
never a 500 — in the URL for every route, and in a body as the database's DataError."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import Request
from fastapi.testclient import TestClient
from sqlalchemy import text

from hub.api.app import create_app
from hub.context import HubContext
from hub.logistics.service import raise_alert
from hub.settings import DEV_OPERATOR_TOKEN
from tests.logistics_support import context, drain

AUTH = {"authorization": f"Bearer {DEV_OPERATOR_TOKEN}"}


@pytest.fixture
def client(db_url: str) -> Iterator[tuple[HubContext, TestClient]]:
    ctx = context(db_url)
    try:
        with TestClient(create_app(ctx), raise_server_exceptions=True) as c:
            yield ctx, c
    finally:
        ctx.store.dispose()


def test_nul_in_query_is_refused_with_the_parameter_named(client: tuple[HubContext, TestClient]) -> None:
    _, c = client
    r = c.get("/alerts", params={"kind": "temp\x00"}, headers=AUTH)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "query parameter kind" in r.json()["detail"]
    fhir = c.get("/fhir/Patient?name=a%00b")
    assert fhir.status_code == 400
    assert fhir.json()["resourceType"] == "OperationOutcome"


def test_nul_in_path_is_refused(client: tuple[HubContext, TestClient]) -> None:
    _, c = client
    r = c.post("/alerts/abc%00def/acknowledge", json={"by": "QA"}, headers=AUTH)
    assert r.status_code == 400
    assert r.json()["detail"].startswith("path contains a NUL")


def test_nul_in_a_body_is_refused_the_same_on_both_back_ends(client: tuple[HubContext, TestClient]) -> None:
    ctx, c = client
    ctx.store.run(lambda w: raise_alert(w, "order-1", "warning", "shipment.customs-hold", "test"))
    drain(ctx)
    (alert,) = c.get("/alerts", headers=AUTH).json()
    r = c.post(f"/alerts/{alert['id']}/acknowledge", json={"by": "Dana\x00 Scully", "note": "x\x00"}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    # Nothing was half-written: the alert is still open and can be acknowledged properly.
    ok = c.post(f"/alerts/{alert['id']}/acknowledge", json={"by": "Dana Scully"}, headers=AUTH)
    assert ok.status_code == 200, ok.text
    assert ok.json()["acknowledged_by"] == "Dana Scully"


def test_a_value_the_database_refuses_is_a_422_not_a_500(pg_url: str) -> None:
    """The backstop, where only PostgreSQL refuses: a DataError from a job is the sender's input."""
    from tests.conftest import truncate_postgres

    truncate_postgres(pg_url)
    ctx = context(pg_url)
    app = create_app(ctx)

    @app.post("/store-this")
    async def store_this(request: Request) -> dict[str, str]:
        value = (await request.json())["value"]
        await ctx.store.run_async(lambda w: w.session.execute(text("SELECT CAST(:v AS text)"), {"v": value}))
        return {"stored": value}

    try:
        with TestClient(app, raise_server_exceptions=True) as c:
            assert c.post("/store-this", json={"value": "ok"}).status_code == 200
            r = c.post("/store-this", json={"value": "a\x00b"})
            assert r.status_code == 422, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
    finally:
        ctx.store.dispose()


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00%2B01:00", "9999-12-31T23:59:59-01:00"])
def test_an_instant_outside_the_years_the_store_holds_is_a_422(
    client: tuple[HubContext, TestClient], since: str
) -> None:
    """Converting it to UTC overflowed in the store: a 500."""
    _, c = client
    r = c.get(f"/alerts?since={since}", headers=AUTH)
    assert r.status_code == 422, r.text
    assert "1900 and 2999" in r.text
