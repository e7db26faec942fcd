from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from hub.api.app import create_app
from hub.context import HubContext
from hub.db.engine import LockLimits
from hub.db.uow import Store, Work, open_store
from hub.partners.loader import PartnerDirectory
from hub.settings import Settings
from tests.builders import Driver
from tests.support.hung_db import HungDatabase

TOKEN = "test-operator-token-0123456789abcdef"


@pytest.fixture
def client(store: Store, partners: PartnerDirectory, db_url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=db_url, operator_token=TOKEN)  # type: ignore[arg-type]
    app = create_app(HubContext(settings, store, partners))
    with TestClient(app) as c:
        yield c


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_health_ready_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["schema"] == "ok"
    metrics = client.get("/metrics")
    assert "cgthub_outbox_pending" in metrics.text
    assert "cgthub_http_requests_total" in metrics.text


def test_metrics_show_messages_not_going_out_and_open_alerts(client: TestClient, store: Store) -> None:
    """/metrics had no sign of ORU^R01s piling up for an unreachable hospital, nor of alerts nobody
    acknowledged: the on-call operator's two first questions."""
    from hub.db.models import Alert
    from hub.db.models_hl7v2 import Hl7v2Outbound
    from hub.db.types import utcnow

    def rows(work: Work) -> None:
        now = utcnow()
        for n, status in enumerate(["pending", "pending", "dead", "delivered"]):
            work.session.add(
                Hl7v2Outbound(
                    control_id=f"METRICS{n}",
                    partner="st-marys",
                    endpoint="mllp://127.0.0.1:9",
                    event_id=f"e{n}",
                    event_type="order.accepted",
                    message_type="ORU^R01",
                    snapshot="{}",
                    status=status,
                    attempts=1,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        for n, (severity, acked) in enumerate([("critical", None), ("warning", None), ("warning", now)]):
            work.session.add(
                Alert(
                    id=f"alert-{n}",
                    event_id=f"alert-event-{n}",
                    severity=severity,
                    kind="test",
                    message="m",
                    raised_at=now,
                    acknowledged_at=acked,
                )
            )

    store.run(rows)
    text = client.get("/metrics").text
    assert 'cgthub_hl7v2_outbound_messages{partner="st-marys",status="pending"} 2.0' in text
    assert 'cgthub_hl7v2_outbound_messages{partner="st-marys",status="dead"} 1.0' in text
    assert 'status="delivered"' not in text
    assert 'cgthub_alerts_open{severity="critical"} 1.0' in text
    assert 'cgthub_alerts_open{severity="warning"} 1.0' in text
    assert 'cgthub_alerts_open{severity="info"} 0.0' in text
    store.run(lambda w: w.session.execute(update(Hl7v2Outbound).values(status="delivered")))
    assert "cgthub_hl7v2_outbound_messages{" not in client.get("/metrics").text  # gone, not stale


def test_capability_statement_states_what_exists(client: TestClient) -> None:
    cs = client.get("/fhir/metadata")
    assert cs.headers["content-type"].startswith("application/fhir+json")
    body = cs.json()
    assert body["fhirVersion"] == "4.0.1"
    sr = next(r for r in body["rest"][0]["resource"] if r["type"] == "ServiceRequest")
    assert {i["code"] for i in sr["interaction"]} == {
        "read",
        "vread",
        "history-instance",
        "history-type",
        "search-type",
        "create",
        "update",
    }
    audit = next(r for r in body["rest"][0]["resource"] if r["type"] == "AuditEvent")
    assert "create" not in {i["code"] for i in audit["interaction"]}  # read-only: the hub writes it
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    CapabilityStatement.model_validate(body)


def test_read_an_order_and_its_tasks(client: TestClient, store: Store, partners: PartnerDirectory) -> None:
    d = Driver.place(store, partners)
    d.walk_to("collected")
    r = client.get(f"/fhir/ServiceRequest/{d.order.id}", headers=auth())
    assert r.status_code == 200
    assert r.headers["etag"] == 'W/"1"'
    assert "last-modified" in r.headers
    assert r.json()["subject"]["reference"].startswith("Patient/")
    tasks = client.get("/fhir/Task", params={"based-on": f"ServiceRequest/{d.order.id}", "_count": 50}, headers=auth())
    statuses = {e["resource"]["code"]["coding"][0]["code"]: e["resource"]["status"] for e in tasks.json()["entry"]}
    assert statuses["collected"] == "completed"
    assert statuses["shipped-to-manufacturing"] == "ready"
    history = client.get(f"/fhir/Task/{d.order.id}-s02/_history", headers=auth()).json()
    assert history["type"] == "history"
    assert history["total"] == 3
    assert client.get(f"/fhir/Task/{d.order.id}-s02/_history/1", headers=auth()).json()["status"] == "requested"


def test_errors_are_operation_outcomes(client: TestClient) -> None:
    unauth = client.get("/fhir/ServiceRequest/x")
    assert unauth.status_code == 401
    assert unauth.json()["resourceType"] == "OperationOutcome"
    missing = client.get("/fhir/ServiceRequest/nope", headers=auth())
    assert missing.status_code == 404
    assert missing.json()["issue"][0]["code"] == "not-found"
    unknown = client.get("/fhir/Banana/1", headers=auth())
    assert unknown.status_code == 404
    assert unknown.json()["resourceType"] == "OperationOutcome"
    bad = client.get("/fhir/ServiceRequest", params={"colour": "red"}, headers=auth())
    assert bad.status_code == 422
    assert bad.json()["issue"][0]["expression"] == ["colour"]
    baddate = client.get("/fhir/ServiceRequest", params={"authored": "ge2026-99"}, headers=auth())
    assert baddate.status_code == 422
    notfhir = client.get("/nothing-here")
    assert notfhir.status_code == 404
    assert notfhir.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("enabled", [False, True])
def test_fastapi_opentelemetry_is_opt_in_and_never_logs(
    store: Store, partners: PartnerDirectory, db_url: str, enabled: bool
) -> None:
    """CGTHUB_OTEL_ENABLED switches FastAPI's request spans and metrics; its logs signal, which
    records exception messages (possibly PHI), stays off either way."""
    settings = Settings(database_url=db_url, otel_enabled=enabled)
    app = create_app(HubContext(settings, store, partners))
    config = app._native_telemetry.config  # FastAPI's resolved telemetry settings
    assert config["tracing"] is enabled
    assert config["metrics"] is enabled
    assert config["logs"] is False


def test_not_ready_on_a_database_migrated_by_other_code(client: TestClient) -> None:
    from sqlalchemy import text

    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    (current,) = ctx.store.read(lambda s: s.execute(text("SELECT version_num FROM alembic_version")).scalars().all())
    ctx.store.run(lambda w: w.session.execute(text("UPDATE alembic_version SET version_num = 'older'")))
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["schema"] == "not at this code's revision"
    finally:
        ctx.store.run(lambda w: w.session.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": current}))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_reads_answer_503_not_500_when_the_database_is_unreachable(
    backend: str, tmp_path: Path, partners: PartnerDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    """A database that is down turns a GET into "retry later" (503, Retry-After, OperationOutcome
    for FHIR, problem JSON elsewhere), as a POST already was, with one log line and no traceback:
    it was a 500 text/plain with a traceback logged per request."""
    # SQLite: a directory cannot be opened as a database file. PostgreSQL: nothing listens on port 1.
    url = f"sqlite:///{tmp_path}" if backend == "sqlite" else "postgresql://postgres@127.0.0.1:1/hub"
    down = open_store(url, check=False)
    settings = Settings(database_url=url, operator_token=TOKEN)  # type: ignore[arg-type]
    try:
        with TestClient(create_app(HubContext(settings, down, partners)), raise_server_exceptions=False) as c:
            for path in ("/fhir/Organization?_count=1", "/fhir/Patient/does-not-matter"):
                caplog.clear()
                r = c.get(path, headers=auth())
                assert r.status_code == 503, (path, r.text)
                assert r.headers["retry-after"] == "5"
                assert r.headers["content-type"].startswith("application/fhir+json")
                assert r.json()["resourceType"] == "OperationOutcome"
                assert r.json()["issue"][0]["code"] == "transient"
                assert not [rec for rec in caplog.records if rec.exc_info], path
                assert "read failed, store unavailable: OperationalError" in caplog.text
            alerts = c.get("/alerts", headers=auth())
            assert alerts.status_code == 503
            assert alerts.headers["content-type"] == "application/problem+json"
            assert alerts.headers["retry-after"] == "5"
            ready = c.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"] == "down: OperationalError"
    finally:
        down.dispose()


def test_readyz_answers_within_its_bound_when_the_database_hangs(partners: PartnerDirectory) -> None:
    """A database that accepts connections and never answers: /readyz says "not ready" within its
    bound instead of hanging with it, and repeated probes wait for the one check already stuck
    rather than each leaving another thread and connection behind."""
    from hub.api.health import CHECK_TIMEOUT_S

    server = HungDatabase()
    url = server.url
    hung = open_store(url, check=False, limits=LockLimits(connect_timeout_s=30))
    settings = Settings(database_url=url, operator_token=TOKEN)  # type: ignore[arg-type]
    with TestClient(create_app(HubContext(settings, hung, partners))) as c:
        try:
            for _ in range(3):
                started = time.monotonic()
                ready = c.get("/readyz")
                assert time.monotonic() - started < CHECK_TIMEOUT_S + 1.5
                assert ready.status_code == 503
                assert ready.json()["checks"]["database"] == f"down: no answer within {CHECK_TIMEOUT_S:g} s"
            assert len(server.accepted) == 1  # one check stuck, not one per probe
        finally:
            server.close()  # before the client's loop closes: it waits for the stuck thread
    hung.dispose()
