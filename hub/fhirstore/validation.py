"""Structural validation of R4 resources through ``fhir.resources.R4B``.

fhir.resources checks structure (types, cardinality, unknown elements, date formats) but not code
bindings (LIBRARIES.md): the statuses the hub relies on are checked here too. Model classes are
imported lazily, one per type, because importing all of R4B costs seconds and ~116 MB.

What is stored is the JSON the partner sent (once valid), not fhir.resources' re-serialisation, so
a resource reads back as it was written (decimal precision, element order) apart from ``meta``.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from hub.errors import Issue, ValidationFailed
from hub.fhirstore.invariants import invariant_issues
from hub.fhirstore.json_types import json_type_issues

# Resource types the hub stores. Anything else is refused with a clear message.
SUPPORTED_TYPES: tuple[str, ...] = (
    "ServiceRequest",
    "Patient",
    "Practitioner",
    "Organization",
    "Location",
    "Task",
    "Specimen",
    "BiologicallyDerivedProduct",
    "Observation",
    "DiagnosticReport",
    "Device",
    "Provenance",
    "AuditEvent",
    "Subscription",  # FHIR API (issue 4): R4 rest-hook subscriptions to a partner's orders
)

# Required code bindings fhir.resources does not enforce (FHIR R4 value sets).
STATUS_CODES: dict[str, frozenset[str]] = {
    "ServiceRequest": frozenset({"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}),
    "Task": frozenset(
        {
            "draft",
            "requested",
            "received",
            "accepted",
            "rejected",
            "ready",
            "cancelled",
            "in-progress",
            "on-hold",
            "failed",
            "completed",
            "entered-in-error",
        }
    ),
    "Observation": frozenset(
        {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"}
    ),
    "DiagnosticReport": frozenset(
        {
            "registered",
            "partial",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "appended",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    ),
    "Specimen": frozenset({"available", "unavailable", "unsatisfactory", "entered-in-error"}),
    "BiologicallyDerivedProduct": frozenset({"available", "unavailable"}),
    "Device": frozenset({"active", "inactive", "entered-in-error", "unknown"}),
    "Subscription": frozenset({"requested", "active", "error", "off"}),
}
INTENT_CODES: dict[str, frozenset[str]] = {
    "ServiceRequest": frozenset(
        {
            "proposal",
            "plan",
            "directive",
            "order",
            "original-order",
            "reflex-order",
            "filler-order",
            "instance-order",
            "option",
        }
    ),
    "Task": frozenset(
        {
            "unknown",
            "proposal",
            "plan",
            "order",
            "original-order",
            "reflex-order",
            "filler-order",
            "instance-order",
            "option",
        }
    ),
}


# Other required bindings of elements partners send (a hospital's HL7 v2 habit, gender "F", is
# not R4): what is stored is served to every partner as it was sent.
GENDER = frozenset({"male", "female", "other", "unknown"})
PRIORITY = frozenset({"routine", "urgent", "asap", "stat"})
OTHER_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Patient", "gender"): GENDER,
    ("Practitioner", "gender"): GENDER,
    ("ServiceRequest", "priority"): PRIORITY,
    ("Task", "priority"): PRIORITY,
}


def code_issues(resource: dict[str, Any], where: str) -> list[Issue]:
    """The required R4 bindings fhir.resources does not check, in the resource and the resources
    it contains. (A value that is not a string is already an issue from the model.)"""
    rtype = resource.get("resourceType")
    checks = [("status", STATUS_CODES.get(str(rtype))), ("intent", INTENT_CODES.get(str(rtype)))]
    checks += [(element, codes) for (of, element), codes in OTHER_CODES.items() if of == rtype]
    issues: list[Issue] = []
    for element, codes in checks:
        value = resource.get(element)
        if codes is not None and isinstance(value, str) and value not in codes:
            at = f"{where}.{element}"
            message = f"{at} must be one of {', '.join(sorted(codes))} (a required R4 binding)"
            issues.append(Issue(message, at, code="code-invalid"))
    contained = resource.get("contained")
    for index, item in enumerate(contained if isinstance(contained, list) else []):
        if isinstance(item, dict):
            issues += code_issues(item, f"{where}.contained[{index}]")
    return issues


@lru_cache(maxsize=64)
def model_class(resource_type: str) -> type[BaseModel]:
    if resource_type not in SUPPORTED_TYPES:
        raise ValidationFailed(
            f"resource type {resource_type!r} is not supported by this hub",
            [Issue(f"unsupported resource type {resource_type!r}", "resourceType", code="not-supported")],
        )
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    cls: type[BaseModel] = getattr(module, resource_type)
    return cls


def fhirpath(resource_type: str, loc: tuple[int | str, ...]) -> str:
    """pydantic error location → FHIRPath-like expression (``ServiceRequest.identifier[0].value``)."""
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("__root__",):
            out += f".{part}"
    return out


def _issue(rtype: str, kind: str, message: str, where: str) -> Issue:
    """A pydantic error as an issue with its FHIR IssueType, in the words of FHIR."""
    if kind == "missing" or kind.endswith(".missing"):
        return Issue(f"{where} is required", where, code="required")
    if kind == "extra_forbidden":
        return Issue(f"{where} is not an element of {rtype} in FHIR R4", where, code="structure")
    if kind.endswith("_type"):  # a JSON object where a list belongs, a number for a string, …
        return Issue(message, where, code="structure")
    return Issue(message, where, code="value")


def _said_better(err: Any, invariants: list[Issue]) -> bool:
    """A pydantic error the invariant walk reports in FHIR's words: an empty string ("String
    should match pattern …") at its element, a choice given twice ("Any of one field value is
    expected …") at ``…[x]`` instead of the parent."""
    if err["type"] == "string_pattern_mismatch" and err.get("input") == "":
        return any("empty string" in i.message for i in invariants)
    if "but got multiple" in str(err["msg"]):
        return any(i.location is not None and i.location.endswith("[x]") for i in invariants)
    return False


def validate(resource: dict[str, Any], expected_type: str | None = None) -> str:
    """Validate a resource; return its type. Raises ValidationFailed listing every issue."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise ValidationFailed(
            "resourceType is missing", [Issue("resourceType is missing", "resourceType", code="required")]
        )
    if expected_type is not None and rtype != expected_type:
        raise ValidationFailed(
            f"expected a {expected_type}, got a {rtype}",
            [Issue(f"expected resourceType {expected_type}", "resourceType")],
        )
    cls = model_class(rtype)
    issues: list[Issue] = []
    invariants = invariant_issues(cls, resource, rtype)
    try:
        cls.model_validate(resource)
    except PydanticValidationError as exc:
        for err in exc.errors():
            if _said_better(err, invariants):
                continue
            issues.append(_issue(rtype, err["type"], err["msg"], fhirpath(rtype, tuple(err["loc"]))))
    issues += invariants
    # What the model converted without a word ("active": "yes"), unless it already said something there.
    reported = {i.location for i in issues}
    issues += [i for i in json_type_issues(cls, resource, rtype) if i.location not in reported]
    issues += code_issues(resource, rtype)
    if issues:
        raise ValidationFailed(f"{rtype} is not valid FHIR R4 ({len(issues)} issue(s))", issues)
    return rtype
