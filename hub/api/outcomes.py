"""Render domain errors: OperationOutcome for FHIR routes, problem JSON (RFC 9457) elsewhere."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from hub import canonical
from hub.errors import HubError, Issue

FHIR_JSON = "application/fhir+json"
# What FHIR answers carry: R4 (http.html, "Content Types and encodings") requires responses to name
# UTF-8 explicitly, since HTTP's default character set is ISO-8859-1.
FHIR_JSON_UTF8 = "application/fhir+json; charset=utf-8"


def operation_outcome(issues: list[Issue], code: str, *, severity: str = "error") -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for issue in issues:
        entry: dict[str, Any] = {
            "severity": issue.severity if issue.severity in ("fatal", "error", "warning", "information") else severity,
            "code": issue.code or code,
            "diagnostics": issue.message,
        }
        if issue.location:
            entry["expression"] = [issue.location]
        out.append(entry)
    return {"resourceType": "OperationOutcome", "issue": out}


def outcome_for(error: HubError) -> dict[str, Any]:
    return operation_outcome(error.issues, error.fhir_code)


def problem_for(error: HubError) -> dict[str, Any]:
    return {
        "type": f"https://cgt-hub.org/problems/{error.fhir_code}",
        "title": type(error).__name__,
        "status": error.status,
        "detail": error.message,
        "issues": [{"message": i.message, "location": i.location} for i in error.issues],
    }


def error_response(path: str, error: HubError) -> Response:
    """The one rendering of an error: OperationOutcome under /fhir, problem JSON elsewhere."""
    headers = {"Retry-After": "5"} if error.retryable else {}
    if path.startswith("/fhir"):
        if error.status == 401:  # RFC 6750 3: the FHIR API takes SMART bearer tokens; say so
            headers["WWW-Authenticate"] = "Bearer"
        return Response(canonical.dumpb(outcome_for(error)), error.status, headers, FHIR_JSON_UTF8)
    return Response(canonical.dumpb(problem_for(error)), error.status, headers, "application/problem+json")
