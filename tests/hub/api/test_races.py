"""Conditional create is race-safe by a database constraint, shown deterministically: request A
holds its transaction open after claiming the key; request B (another store: another process's
connection) runs the same conditional create meanwhile. On PostgreSQL B's key insert waits for A
and then hits the primary key; on SQLite B cannot begin until A commits. Either way: one resource,
and B answers with A's."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from hub.api.auth import Principal, Scope
from hub.api.fhir_service import FhirService, Result
from hub.db.uow import Store, Work, open_store
from hub.partners.loader import PartnerDirectory
from tests.hub.api.fhir_data import order, placer

ST_MARYS = Principal("partner", "st-marys", "st-marys-ehr", (Scope.parse("system/*.cruds"),), "system/*.cruds")  # type: ignore[arg-type]


def _race(store: Store, db_url: str, partners: PartnerDirectory, make: Any) -> tuple[Result, Result]:
    other = open_store(db_url)
    claimed, release = threading.Event(), threading.Event()
    results: dict[str, Result] = {}

    def job_a(work: Work) -> Result:
        result = make(FhirService(work, ST_MARYS, partners))
        claimed.set()
        assert release.wait(30)
        return result

    def run_a() -> None:
        results["a"] = store.run(job_a)

    def run_b() -> None:
        results["b"] = other.run(lambda w: make(FhirService(w, ST_MARYS, partners)))

    try:
        a = threading.Thread(target=run_a)
        a.start()
        assert claimed.wait(30)
        b = threading.Thread(target=run_b)
        b.start()
        b.join(1.0)  # B is now blocked on A's key (PostgreSQL) or on the write lock (SQLite)
        assert b.is_alive()
        release.set()
        a.join(30)
        b.join(30)
    finally:
        other.dispose()
    return results["a"], results["b"]


def test_conditional_create_race(store: Store, db_url: str, fhir_partners: PartnerDirectory) -> None:
    value = uuid.uuid4().hex
    body = {"resourceType": "Location", "name": "Cell lab", "identifier": [{"system": "urn:race", "value": value}]}
    a, b = _race(store, db_url, fhir_partners, lambda svc: svc.create("Location", body, f"identifier=urn:race|{value}"))
    assert (a.status, b.status) == (201, 200)
    assert a.stored is not None
    assert b.stored is not None
    assert a.stored.id == b.stored.id


def test_conditional_order_race(store: Store, db_url: str, fhir_partners: PartnerDirectory) -> None:
    number = placer()["value"]
    crit = f"identifier=urn:oid:2.16.840.1.113883.3.8998.2|{number}"
    a, b = _race(store, db_url, fhir_partners, lambda svc: svc.create("ServiceRequest", order(number), crit))
    assert (a.status, b.status) == (201, 200)
    assert a.stored is not None
    assert b.stored is not None
    assert a.stored.id == b.stored.id
