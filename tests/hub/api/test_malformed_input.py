"""A partner's malformed input is a 4xx with an OperationOutcome, never a 500: shapes found by a
review that sent plausible mistakes to every FHIR route (wrong JSON types in known elements,
nesting, out-of-range instants, malformed Bundle entries and Parameters)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.hub.api.conftest import ClientKey, bearer
from tests.hub.api.fhir_data import order


def _nested(depth: int) -> dict[str, Any]:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return {"url": "urn:x", "valueString": "x", "extension": value}


def _entry(resource: dict[str, Any], **request: Any) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource, "request": request}


def _tx(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}

POSTS: list[tuple[str, str, Any]] = [
    ("device status as a list", "/fhir/Device", {"resourceType": "Device", "status": ["active"]}),
    ("intent as an object", "/fhir/ServiceRequest", {**order(), "intent": {"a": 1}}),
    ("meta as a string", "/fhir/Patient", {"resourceType": "Patient", "meta": "x"}),
    ("meta.profile a number", "/fhir/Patient", {"resourceType": "Patient", "meta": {"profile": 5}}),
    ("meta.profile nested", "/fhir/Patient", {"resourceType": "Patient", "meta": {"profile": [["a"]]}}),
    ("extension a number", "/fhir/ServiceRequest", {**order(), "extension": 5}),
    ("nested 600 deep", "/fhir/Patient", {"resourceType": "Patient", "extension": [_nested(600)]}),
    ("subject a string", "/fhir/ServiceRequest", {**order(), "subject": "Patient/1"}),
    ("contained strings", "/fhir/ServiceRequest", {**order(), "contained": ["x"]}),
    (
        "channel a string",
        "/fhir/Subscription",
        {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "x",
            "criteria": "ServiceRequest",
            "channel": "x",
        },
    ),
    ("effective before year 1 in UTC", "/fhir/Observation", {**OBS, "effectiveDateTime": "0001-01-01T00:00:00+01:00"}),
    ("lower-case method", "/fhir", _tx(_entry(OBS, method="post", url="Observation"))),
    ("fullUrl a list", "/fhir", _tx({**_entry(OBS, method="POST", url="Observation"), "fullUrl": ["x"]})),
    ("ifNoneExist a number", "/fhir", _tx(_entry(OBS, method="POST", url="Observation", ifNoneExist=5))),
    (
        "batch ifNoneExist a number",
        "/fhir",
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [_entry(OBS, method="POST", url="Observation", ifNoneExist=5)],
        },
    ),
    (
        "bundle entry nested 900 deep",
        "/fhir",
        _tx(_entry({**OBS, "extension": [_nested(900)]}, method="POST", url="Observation")),
    ),
    ("$validate parameter a string", "/fhir/Patient/$validate", {"resourceType": "Parameters", "parameter": "abc"}),
    ("$validate parameter numbers", "/fhir/Patient/$validate", {"resourceType": "Parameters", "parameter": [1]}),
    ("$validate device status list", "/fhir/Device/$validate", {"resourceType": "Device", "status": []}),
]


@pytest.mark.parametrize(("what", "path", "body"), POSTS, ids=[p[0] for p in POSTS])
def test_a_malformed_write_is_not_a_crash(
    api: TestClient, client_keys: dict[str, ClientKey], what: str, path: str, body: Any
) -> None:
    h = bearer(api, client_keys["st-marys"])
    r = api.post(path, json=body, headers=h)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if what.startswith("$validate"):
        assert any(i["severity"] == "error" for i in r.json()["issue"]), r.text
    elif what == "lower-case method":
        assert r.status_code == 200, r.text  # processed as the POST it is
    elif what == "effective before year 1 in UTC":
        assert r.status_code == 201, r.text  # valid FHIR; only its date index is left out
    else:
        assert r.status_code >= 400, r.text
        assert r.json()["resourceType"] == "OperationOutcome"


GETS = [
    "/fhir/Patient?_lastUpdated=ge0001-01-01T00:00:00%2B01:00",
    "/fhir/Patient?_lastUpdated=le9999-12-31T23:59:59-01:00",
    "/fhir/Patient/_history?_since=0001-01-01T00:00:00%2B05:00",
    "/fhir/ServiceRequest?authored=0001-01-01T00:00:00%2B01:00",
]


@pytest.mark.parametrize("path", GETS)
def test_an_out_of_range_instant_in_a_search_is_not_a_crash(
    api: TestClient, client_keys: dict[str, ClientKey], path: str
) -> None:
    r = api.get(path, headers=bearer(api, client_keys["st-marys"]))
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert r.json()["resourceType"] in ("Bundle", "OperationOutcome")


def test_a_conditional_create_with_an_out_of_range_instant(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    r = api.post(
        "/fhir/Observation", json=OBS, headers={**h, "If-None-Exist": "_lastUpdated=0001-01-01T00:00:00%2B01:00"}
    )
    assert r.status_code < 500, (r.status_code, r.text[:300])
