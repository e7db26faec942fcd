"""What a hospital developer sees when the hub refuses a resource: every issue at once, each
located by a FHIRPath expression that points at the element (in a Bundle: at the entry)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.hub.api.conftest import OPERATOR, ClientKey, bearer
from tests.hub.api.fhir_data import order, order_transaction


def _expressions(outcome: dict[str, Any]) -> list[str]:
    assert outcome["resourceType"] == "OperationOutcome"
    return [e for issue in outcome["issue"] for e in issue.get("expression", [])]


def test_transaction_issues_name_the_entry_and_cover_every_entry(
    api: TestClient, client_keys: dict[str, ClientKey]
) -> None:
    """The issues read ``Bundle.entry[1] Patient.birthDate`` (not FHIRPath), and only the first
    failing entry was reported: the order's own errors came back only after the Patient was fixed."""
    h = bearer(api, client_keys["st-marys"])
    bundle = order_transaction()
    bundle["entry"][0]["resource"]["intent"] = "plan"  # the order (entry 0)
    bundle["entry"][1]["resource"]["birthDate"] = "2020-13-45"  # the Patient (entry 1)
    r = api.post("/fhir", json=bundle, headers=h)
    assert r.status_code == 422, r.text
    where = _expressions(r.json())
    assert "Bundle.entry[1].resource.birthDate" in where
    assert "Bundle.entry[0].resource" in where or "Bundle.entry[0].resource.intent" in where
    assert all(w.startswith("Bundle.entry[") and " " not in w for w in where), where


def test_operator_transaction_issues_are_fhirpath(api: TestClient) -> None:
    bundle = order_transaction()
    bundle["entry"][0]["resource"].pop("subject")
    bundle["entry"][2]["resource"]["name"] = [{"family": 7}]
    r = api.post("/fhir", json=bundle, headers=OPERATOR)
    assert r.status_code == 422, r.text
    where = _expressions(r.json())
    assert "Bundle.entry[0].resource.subject" in where
    assert "Bundle.entry[2].resource.name[0].family" in where


def test_validate_refuses_a_local_reference_to_nothing_as_create_does(
    api: TestClient, client_keys: dict[str, ClientKey]
) -> None:
    """$validate answered "no issues found" for an order whose subject is ``#nothere`` (no such
    contained Patient), and the create of the same order was then refused: the check lived only in
    the order placement code, not in the profile $validate runs."""
    h = bearer(api, client_keys["st-marys"])
    bad = order()
    bad["subject"] = {"reference": "#nothere"}
    bad["requester"] = {"reference": "#p1"}  # the contained Patient, not a Practitioner
    v = api.post("/fhir/ServiceRequest/$validate", json=bad, headers=h)
    assert v.status_code == 200
    issues = v.json()["issue"]
    assert {i["severity"] for i in issues} == {"error"}
    assert _expressions(v.json()) == ["ServiceRequest.subject", "ServiceRequest.requester"]
    assert "cgt-9" in issues[0]["diagnostics"]
    assert "cgt-10" in issues[1]["diagnostics"]
    c = api.post("/fhir/ServiceRequest", json=bad, headers=h)
    assert c.status_code == 422
    assert _expressions(c.json()) == _expressions(v.json())


def test_instance_validate(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    """``GET`` and ``POST [base]/ServiceRequest/<id>/$validate`` answered 404 "Not Found" (no such
    route), though the CapabilityStatement offers $validate and R4 defines it at instance level."""
    h = bearer(api, client_keys["st-marys"])
    sr = api.post("/fhir/ServiceRequest", json=order(), headers=h).json()
    url = f"/fhir/ServiceRequest/{sr['id']}/$validate"
    got = api.get(url, headers=h)
    assert got.status_code == 200, got.text
    assert [i["severity"] for i in got.json()["issue"]] == ["information"]

    change = {**sr, "intent": "wish"}
    for body in (change, {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": change}]}):
        r = api.post(url, json=body, headers=h)
        assert r.status_code == 200, r.text
        assert _expressions(r.json()) == ["ServiceRequest.intent"]
    other_id = {**sr, "id": "someone-else"}
    r = api.post(
        url,
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "resource", "resource": other_id}, {"name": "mode", "valueCode": "update"}],
        },
        headers=h,
    )
    assert _expressions(r.json()) == ["ServiceRequest.id"]
    # Another hospital's order is not there for it, as on a read.
    other = bearer(api, client_keys["lakeside-hospital"])
    assert api.get(url, headers=other).status_code == 404
    assert api.post(url, json=sr, headers=other).status_code == 404


def test_validate_of_the_wrong_type_says_where(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    h = bearer(api, client_keys["st-marys"])
    r = api.post("/fhir/ServiceRequest/$validate", json={"resourceType": "Patient"}, headers=h)
    assert r.status_code == 400
    assert _expressions(r.json()) == ["Patient.resourceType"]
    empty = {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "create"}]}
    r = api.post("/fhir/ServiceRequest/$validate", json=empty, headers=h)
    assert r.status_code == 400
    assert _expressions(r.json()) == ["Parameters.parameter.where(name='resource').resource.resourceType"]
    bad_mode = {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "upsert"}]}
    r = api.post("/fhir/ServiceRequest/$validate", json=bad_mode, headers=h)
    assert _expressions(r.json()) == ["Parameters.parameter[0].valueCode"]
    r = api.post("/fhir/ServiceRequest", json={"resourceType": "Patient"}, headers=h)
    assert r.status_code == 400
    assert _expressions(r.json()) == ["Patient.resourceType"]


def test_json_types_fhir_does_not_allow_are_refused(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    """fhir.resources converts ``"active": "yes"`` to True (and "3" to 3, "1.5" to a decimal) and
    the hub stored the JSON as sent: the Patient was accepted (201) and served back to every
    reader as invalid FHIR. A contained resource without resourceType passed too."""
    h = bearer(api, client_keys["st-marys"])
    patient = {
        "resourceType": "Patient",
        "active": "yes",
        "multipleBirthInteger": "3",
        "gender": None,
        "name": [{"family": "Rivera", "given": ["Ana", None]}],  # null aligned with _given: allowed
        "contained": [{"id": "x"}],
    }
    patient["name"][0]["_given"] = [None, {"extension": [{"url": "http://example.org/x", "valueBoolean": True}]}]
    r = api.post("/fhir/Patient", json=patient, headers=h)
    assert r.status_code == 422, r.text
    where = _expressions(r.json())
    assert sorted(where) == [
        "Patient.active",
        "Patient.contained[0].resourceType",
        "Patient.gender",
        "Patient.multipleBirthInteger",
    ]
    assert all("yes" not in i["diagnostics"] for i in r.json()["issue"])  # the value is not echoed
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "viability"},
        "valueQuantity": {"value": "97.5", "unit": "%"},
    }
    v = api.post("/fhir/Observation/$validate", json=obs, headers=h)
    assert _expressions(v.json()) == ["Observation.valueQuantity.value"]
    obs["valueQuantity"]["value"] = 97.5
    assert api.post("/fhir/Observation", json=obs, headers=h).status_code == 201


def test_each_issue_has_its_issue_type(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    """Every issue came back with code "invalid" (missing subject, unknown element, bad date,
    unknown product alike), the same missing element was reported twice ("Field required" from
    the model and again by the profile), and an unknown element read "Extra inputs are not
    permitted"."""
    h = bearer(api, client_keys["st-marys"])
    bad = order()
    bad.pop("subject")
    bad["code"]["coding"][0]["code"] = "not-a-product"
    bad["intent"] = "plan"
    bad["authoredOn"] = "2020-13-45"
    bad["priority"] = "whenever"
    bad["colour"] = "blue"
    expected = {
        ("ServiceRequest.subject", "required"),
        ("ServiceRequest.code", "code-invalid"),
        ("ServiceRequest", "invariant"),  # cgt-2: intent order
        ("ServiceRequest.authoredOn", "value"),
        ("ServiceRequest.colour", "structure"),
    }
    for r in (
        api.post("/fhir/ServiceRequest", json=bad, headers=h),
        api.post("/fhir/ServiceRequest/$validate", json=bad, headers=h),
    ):
        issues = r.json()["issue"]
        got = [(i["expression"][0], i["code"]) for i in issues]
        assert expected <= set(got), got
        assert len(got) == len(set(got)), got  # each said once
        assert {i["severity"] for i in issues} == {"error"}
        unknown = next(i for i in issues if i["expression"] == ["ServiceRequest.colour"])
        assert "not an element of ServiceRequest" in unknown["diagnostics"]
        assert all("blue" not in i["diagnostics"] for i in issues)


def test_required_r4_codes_in_the_order_and_its_contained_patient(
    api: TestClient, client_keys: dict[str, ClientKey]
) -> None:
    """An order with priority "whenever" and a contained Patient with gender "F" (the HL7 v2
    code) was accepted with 201, and the Patient stored with gender "F" was served to every
    partner as invalid R4."""
    h = bearer(api, client_keys["st-marys"])
    bad = order()
    bad["priority"] = "whenever"
    bad["contained"][0]["gender"] = "F"
    r = api.post("/fhir/ServiceRequest", json=bad, headers=h)
    assert r.status_code == 422, r.text
    issues = r.json()["issue"]
    assert [(i["expression"][0], i["code"]) for i in issues] == [
        ("ServiceRequest.priority", "code-invalid"),
        ("ServiceRequest.contained[0].gender", "code-invalid"),
    ]
    assert "female" in issues[1]["diagnostics"]
    good = order()
    good["priority"] = "urgent"
    good["contained"][0]["gender"] = "female"
    assert api.post("/fhir/ServiceRequest", json=good, headers=h).status_code == 201


def test_empty_elements_and_valueless_extensions_are_refused(
    api: TestClient, client_keys: dict[str, ClientKey]
) -> None:
    """``name: [{}]``, ``identifier: [{}]``, an extension with only a url and one
    with both a value and extensions were stored (201) and served back as invalid FHIR (R4 ele-1:
    every element has a value or children; ext-1: an extension has extensions or a value[x], not
    both); ``given: [""]`` was refused in pydantic's words ("String should match pattern")."""
    h = bearer(api, client_keys["st-marys"])
    patient = {
        "resourceType": "Patient",
        "identifier": [{}],
        "name": [{}, {"family": "Rivera", "given": [""]}],
        "extension": [
            {"url": "http://example.org/no-value"},
            {
                "url": "http://example.org/both",
                "valueString": "a",
                "extension": [{"url": "http://example.org/inner", "valueBoolean": True}],
            },
        ],
    }
    expected = {
        ("Patient.identifier[0]", "invariant"),
        ("Patient.name[0]", "invariant"),
        ("Patient.name[1].given[0]", "invariant"),
        ("Patient.extension[0]", "invariant"),
        ("Patient.extension[1]", "invariant"),
    }
    create = api.post("/fhir/Patient", json=patient, headers=h)
    assert create.status_code == 422, create.text
    check = api.post("/fhir/Patient/$validate", json=patient, headers=h)
    assert check.status_code == 200
    for outcome in (create.json(), check.json()):
        got = [(i["expression"][0], i["code"]) for i in outcome["issue"]]
        assert sorted(got) == sorted(expected), got  # one issue each
        assert all("pattern" not in i["diagnostics"] for i in outcome["issue"])
    fine = {"resourceType": "Patient", "name": [{"family": "Rivera", "given": ["Ana"]}]}
    fine["extension"] = [{"url": "http://example.org/x", "extension": [{"url": "y", "valueString": "a"}]}]
    assert api.post("/fhir/Patient", json=fine, headers=h).status_code == 201


def test_a_choice_given_twice_is_located_at_the_choice(api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    """``deceasedBoolean`` with ``deceasedDateTime`` was located at ``Patient`` and read "Value
    error, Any of one field value is expected from this list [...], but got multiple!"."""
    h = bearer(api, client_keys["st-marys"])
    patient = {"resourceType": "Patient", "deceasedBoolean": True, "deceasedDateTime": "2026-01-02"}
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "viability"},
        "component": [{"code": {"text": "cd34"}, "valueString": "high", "valueBoolean": True}],
    }
    for body, where in ((patient, "Patient.deceased[x]"), (obs, "Observation.component[0].value[x]")):
        r = api.post(f"/fhir/{body['resourceType']}", json=body, headers=h)
        assert r.status_code == 422, r.text
        issues = r.json()["issue"]
        assert [i["expression"] for i in issues] == [[where]]
        assert "got multiple" not in issues[0]["diagnostics"]
        assert "Value error" not in issues[0]["diagnostics"]
