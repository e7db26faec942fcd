from __future__ import annotations

from fastapi.testclient import TestClient

from hub.orders.fhir import COI_SYSTEM
from tests.hub.api.conftest import OPERATOR, ClientKey, bearer
from tests.hub.api.fhir_data import order, order_transaction, placer


def test_post_service_request_places_an_order(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    r = api.post("/fhir/ServiceRequest", json=order(), headers={**h, "Content-Type": "application/fhir+json"})
    assert r.status_code == 201, r.text
    sr = r.json()
    coi = [i for i in sr["identifier"] if i["system"] == COI_SYSTEM]
    assert len(coi) == 1
    assert coi[0]["value"].startswith("CHA9998")
    assert r.headers["x-coi"].replace(" ", "").startswith("A9998") or r.headers["x-coi"]
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"].endswith(f"/fhir/ServiceRequest/{sr['id']}/_history/1")
    assert sr["subject"]["reference"].startswith("Patient/")
    assert "contained" not in sr
    # The answer names every site the order was placed with, the defaulted ones included.
    sites = {}
    for ext in sr["extension"]:
        if ext["url"].endswith("/cgt-site"):
            parts = {e["url"]: e for e in ext["extension"]}
            sites[parts["role"]["valueCode"]] = parts["partner"]["valueIdentifier"]["value"]
    assert sites == {
        "collection": "st-marys",
        "manufacturing": "leiden-cell-factory",
        "treatment": "st-marys",
        "lab": "northlab-analytics",
    }
    tasks = api.get("/fhir/Task", params={"based-on": f"ServiceRequest/{sr['id']}"}, headers=h).json()
    assert len(tasks["entry"]) >= 10
    patient = api.get(f"/fhir/{sr['subject']['reference']}", headers=h)
    assert patient.status_code == 200


def test_transaction_with_patient_and_order(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    r = api.post("/fhir", json=order_transaction(), headers=h)
    assert r.status_code == 200, r.text
    resp = r.json()
    assert resp["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in resp["entry"]]
    assert statuses == ["201 Created", "201 Created", "201 Created"]
    assert all(e["fullUrl"].startswith("http") and "/fhir/" in e["fullUrl"] for e in resp["entry"])
    sr_loc = resp["entry"][0]["response"]["location"]
    pat_loc = resp["entry"][1]["response"]["location"]
    sr = api.get(f"/fhir/{sr_loc.rsplit('/_history', 1)[0]}", headers=h).json()
    assert sr["subject"]["reference"] == pat_loc.rsplit("/_history", 1)[0]


def test_order_validation_lists_every_issue(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    bad = order()
    bad["intent"] = "plan"
    bad["identifier"] = [{"system": "x", "value": "1"}]
    bad["code"]["coding"][0]["code"] = "not-a-product"
    bad["contained"][0].pop("birthDate")
    r = api.post("/fhir/ServiceRequest", json=bad, headers=h)
    assert r.status_code == 422, r.text
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    text = " ".join(i["diagnostics"] for i in oo["issue"])
    for key in ("cgt-1", "cgt-2", "cgt-5", "therapy-product"):
        assert key in text
    assert all(i.get("expression") for i in oo["issue"])
    v = api.post("/fhir/ServiceRequest/$validate", json=bad, headers=h)
    assert v.status_code == 200
    assert len(v.json()["issue"]) == len(oo["issue"])


def test_conditional_create_of_an_order(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    number = placer()["value"]
    crit = {"If-None-Exist": f"identifier=urn:oid:2.16.840.1.113883.3.8998.2|{number}"}
    first = api.post("/fhir/ServiceRequest", json=order(number), headers={**h, **crit})
    again = api.post("/fhir/ServiceRequest", json=order(number), headers={**h, **crit})
    assert first.status_code == 201
    assert again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    dup = api.post("/fhir/ServiceRequest", json=order(number), headers=h)
    assert dup.status_code == 409


def test_operator_token_still_reads(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    sr = api.post("/fhir/ServiceRequest", json=order(), headers=h).json()
    assert api.get(f"/fhir/ServiceRequest/{sr['id']}", headers=OPERATOR).status_code == 200


def test_a_value_out_of_the_commands_bounds_is_a_422_not_a_crash(
    api: TestClient, client_keys: dict[str, ClientKey]
) -> None:
    """A placer number over 128 characters passed the FHIR checks and failed building the core's
    command: a 500, and a logged traceback quoting the value (which may be PHI)."""
    hb = bearer(api, client_keys["st-marys"])
    o = order()
    o["identifier"] = [placer("P" * 129)]
    r = api.post("/fhir/ServiceRequest", json=o, headers=hb)
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["ServiceRequest.identifier"]
    assert "128" in issue["diagnostics"]
