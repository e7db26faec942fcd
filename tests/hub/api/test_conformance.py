"""The conformance artefacts: valid FHIR, in step with the products, and the examples conform."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.api.conformance import CONFORMANCE_DIR, THERAPY_ORDER, issues_for, registry
from hub.products.registry import get_product

ARTEFACTS = sorted(CONFORMANCE_DIR.glob("*.json"))


@pytest.mark.parametrize("path", ARTEFACTS, ids=lambda p: p.name)
def test_artefacts_are_valid_r4(path: Path) -> None:
    doc = json.loads(path.read_text())
    module = __import__(f"fhir.resources.R4B.{doc['resourceType'].lower()}", fromlist=[doc["resourceType"]])
    getattr(module, doc["resourceType"]).model_validate(doc)


def test_product_value_set_matches_the_product_definitions() -> None:
    vs = registry().value_sets["https://cgt-hub.org/fhir/ValueSet/therapy-product"]
    codes = {c for _, c in vs.codes}
    defs = {p.stem for p in (Path(__file__).resolve().parents[3] / "hub" / "products" / "definitions").glob("*.yaml")}
    assert codes == defs
    for code in codes:
        assert get_product(code).code == code


@pytest.mark.parametrize("name", ["therapy-order.json", "order-transaction.json"])
def test_examples_conform(name: str) -> None:
    doc = json.loads((CONFORMANCE_DIR / "examples" / name).read_text())
    resources = [e["resource"] for e in doc["entry"]] if doc["resourceType"] == "Bundle" else [doc]
    for resource in resources:
        profiles = [THERAPY_ORDER] if resource["resourceType"] == "ServiceRequest" else []
        assert [i for i in issues_for(resource, profiles) if i.severity == "error"] == []


def test_site_roles_match_the_site_role_value_set() -> None:
    """Order placement names the roles in code (``ROLES``); the profile binds them to a ValueSet:
    the two must not drift apart."""
    from hub.api.fhir_orders import ROLES

    vs = registry().value_sets["https://cgt-hub.org/fhir/ValueSet/site-role"]
    assert {c for _, c in vs.codes} == set(ROLES)
