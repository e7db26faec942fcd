"""One family of domain errors. Each carries what every edge needs to render it:

* an HTTP status (FHIR routes render an OperationOutcome, other routes problem JSON),
* a FHIR ``IssueType`` code,
* an HL7 v2 table 0357 error code (MLLP adapters render AE/AR with an ERR segment).

Edges catch ``HubError``; anything else is our bug and is a 500.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Issue:
    """One problem in a request: a message for people and where it is (FHIRPath or HL7 location)."""

    message: str
    location: str | None = None
    severity: str = "error"
    code: str | None = None  # FHIR IssueType (required, structure, value, code-invalid, …); None: the error's own


@dataclass
class HubError(Exception):
    message: str
    issues: list[Issue] = field(default_factory=list)

    status: int = 400
    fhir_code: str = "processing"
    hl7_code: str = "207"  # Application internal error
    retryable: bool = False

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if not self.issues:
            self.issues = [Issue(self.message)]

    def __str__(self) -> str:
        return self.message


class ValidationFailed(HubError):
    """The input is well-formed but breaks a rule (FHIR structure, a required field, a profile)."""

    hl7_error = "101"  # Required field missing

    def __init__(self, message: str, issues: list[Issue] | None = None) -> None:
        super().__init__(message, issues or [], status=422, fhir_code="invalid", hl7_code=self.hl7_error)


class WrongDataType(ValidationFailed):
    """A value of the wrong kind for its field (text where a number belongs)."""

    hl7_error = "102"  # Data type error


class NotFound(HubError):
    def __init__(self, message: str) -> None:
        super().__init__(message, [], status=404, fhir_code="not-found", hl7_code="204")


class Conflict(HubError):
    """A version or uniqueness conflict (duplicate order, stale If-Match)."""

    def __init__(self, message: str, issues: list[Issue] | None = None) -> None:
        super().__init__(message, issues or [], status=409, fhir_code="conflict", hl7_code="205")


class GuardFailed(HubError):
    """A journey command whose guard does not hold (missing verification, expired viability, …)."""

    def __init__(self, message: str, issues: list[Issue] | None = None) -> None:
        super().__init__(message, issues or [], status=409, fhir_code="business-rule", hl7_code="207")


class InvalidScan(HubError):
    """A barcode whose length, format or check character is wrong."""

    def __init__(self, message: str, location: str | None = None) -> None:
        super().__init__(message, [Issue(message, location)], status=422, fhir_code="value", hl7_code="102")


class Forbidden(HubError):
    def __init__(self, message: str) -> None:
        super().__init__(message, [], status=403, fhir_code="forbidden", hl7_code="207")


class AuthenticationFailed(HubError):
    def __init__(self, message: str = "authentication failed") -> None:
        super().__init__(message, [], status=401, fhir_code="login", hl7_code="207")


class StoreUnavailable(HubError):
    """The database could not commit. Partners must retry; never acknowledge positively."""

    def __init__(self, message: str = "the store is unavailable, retry later") -> None:
        super().__init__(message, [], status=503, fhir_code="transient", hl7_code="207", retryable=True)
