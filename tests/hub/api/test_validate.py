"""What a hospital developer sees when the hub refuses a resource: every issue at once, each
located by a FHIRPath expression that points at the element (in a Bundle: at the entry)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.hub.api.conftest import OPERATOR, ClientKey, bearer
from tests.hub.api.fhir_data import order_transaction


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
