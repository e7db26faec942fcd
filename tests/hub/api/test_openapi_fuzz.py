"""schemathesis against the OpenAPI document: whatever it generates for each operation, with the
operator's token and with a partner's, the server never answers 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from tests.hub.api.conftest import OPERATOR, ClientKey, bearer


@pytest.mark.slow
def test_no_server_errors(fhir_app: FastAPI, api: TestClient, client_keys: dict[str, ClientKey]) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fhir_app)
    partner = bearer(api, client_keys["st-marys"])
    failures: list[str] = []
    seen: list[tuple[str, int]] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12

    def fuzz(operation: Any) -> None:
        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            for headers in (OPERATOR, partner):
                response = case.call(headers={**(case.headers or {}), **headers})
                seen.append((operation.label, response.status_code))
                if response.status_code >= 500:
                    failures.append(f"{operation.label}: {response.status_code} {response.text[:300]}")

        run()

    for operation in operations:
        fuzz(operation)
    assert failures == []
    assert any(200 <= status < 300 for _, status in seen)  # it reached real handlers, not only 404s
