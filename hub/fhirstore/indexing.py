"""Which search parameters the store indexes, and how they are read from a resource.

Deliberately small and explicit: each entry names a FHIR search parameter and the element(s) it
reads. The CapabilityStatement lists exactly these (plus ``_id`` and ``_lastUpdated``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class Extracted:
    tokens: list[tuple[str, str | None, str]]  # (param, system, value)
    references: list[tuple[str, str]]  # (element, target "Type/id")
    dates: list[tuple[str, datetime, datetime]]  # (param, start, end): the stored value's range


# param -> element names; "identifier" and "status" apply to every type that has them.
TOKEN_PARAMS: dict[str, tuple[str, ...]] = {
    "identifier": ("identifier",),
    "status": ("status",),
    "code": ("code",),
}
REFERENCE_PARAMS: dict[str, dict[str, tuple[str, ...]]] = {
    "ServiceRequest": {"subject": ("subject",), "patient": ("subject",), "requester": ("requester",)},
    "Task": {"subject": ("for",), "patient": ("for",), "based-on": ("basedOn",)},
    "Specimen": {"subject": ("subject",), "patient": ("subject",), "request": ("request",)},
    "Observation": {"subject": ("subject",), "patient": ("subject",), "based-on": ("basedOn",)},
    "DiagnosticReport": {"subject": ("subject",), "patient": ("subject",), "based-on": ("basedOn",)},
    "Provenance": {"target": ("target",), "patient": ("target",)},
    "AuditEvent": {"entity": ("entity",)},
    "BiologicallyDerivedProduct": {"request": ("request",)},
    "Device": {"patient": ("patient",)},
}
DATE_PARAMS: dict[str, dict[str, str]] = {
    "ServiceRequest": {"authored": "authoredOn"},
    "Observation": {"date": "effectiveDateTime"},
    "DiagnosticReport": {"date": "effectiveDateTime"},
}


@lru_cache(maxsize=64)
def reference_elements(rtype: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for elements in REFERENCE_PARAMS.get(rtype, {}).values():
        for element in elements:
            seen[element] = None
    return tuple(seen)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def parse_instant(value: str) -> datetime | None:
    """FHIR dateTime → aware UTC (dates without a zone are read as UTC; partial dates start)."""
    try:
        if len(value) == 4:
            return datetime(int(value), 1, 1, tzinfo=UTC)
        if len(value) == 7:
            return datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC: no instant to compare
        return None


_TIME = re.compile(r"^T(?P<hm>\d\d:\d\d)(?P<s>:\d\d)?(?P<f>\.\d+)?")


def instant_range(value: str) -> tuple[datetime, datetime] | None:
    """A date's implicit range ``[start, end)`` from its precision (FHIR search, date parameters;
    the same for a search value and a stored value): ``2026`` is the whole year, ``2026-12-03``
    the whole day, ``…T10:15Z`` the minute, ``…T10:15:00Z`` the second; fractional seconds name
    one instant."""
    start = parse_instant(value)
    if start is None:
        return None
    if len(value) == 4:
        return start, start.replace(year=start.year + 1) if start.year < 9999 else datetime.max.replace(tzinfo=UTC)
    if len(value) == 7:
        year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
        end = start.replace(year=year, month=month) if year <= 9999 else datetime.max.replace(tzinfo=UTC)
        return start, end
    time = _TIME.match(value[10:])
    if time is None:
        step = timedelta(days=1)
    elif time.group("f"):
        step = timedelta(microseconds=1)
    elif time.group("s"):
        step = timedelta(seconds=1)
    else:
        step = timedelta(minutes=1)
    try:
        return start, start + step
    except OverflowError:
        return start, datetime.max.replace(tzinfo=UTC)


def extract(resource: dict[str, Any]) -> Extracted:
    rtype = resource["resourceType"]
    tokens: list[tuple[str, str | None, str]] = []
    for ident in _as_list(resource.get("identifier")):
        if isinstance(ident, dict) and ident.get("value"):
            tokens.append(("identifier", ident.get("system"), str(ident["value"])[:255]))
    status = resource.get("status")
    if isinstance(status, str):
        tokens.append(("status", None, status))
    for concept in _as_list(resource.get("code")):
        if isinstance(concept, dict):
            for coding in _as_list(concept.get("coding")):
                if isinstance(coding, dict) and coding.get("code"):
                    tokens.append(("code", coding.get("system"), str(coding["code"])[:255]))
    references: list[tuple[str, str]] = []
    # One row per referencing *element* (``subject`` serves both ``subject`` and ``patient``).
    for element in reference_elements(rtype):
        for ref in _as_list(resource.get(element)):
            if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                references.append((element, ref["reference"][:160]))
    dates: list[tuple[str, datetime, datetime]] = []
    for param, element in DATE_PARAMS.get(rtype, {}).items():
        raw = resource.get(element)
        if isinstance(raw, str):
            bounds = instant_range(raw)  # a stored 2026-12 is the whole month, as a search value is
            if bounds is not None:
                dates.append((param, *bounds))
    return Extracted(tokens, references, dates)


def search_params_for(resource_type: str) -> list[tuple[str, str]]:
    """(name, FHIR search type) pairs served for a type — the CapabilityStatement's source."""
    params: list[tuple[str, str]] = [("_id", "token"), ("_lastUpdated", "date"), ("identifier", "token")]
    params.append(("status", "token"))
    params += [(name, "reference") for name in REFERENCE_PARAMS.get(resource_type, {})]
    params += [(name, "date") for name in DATE_PARAMS.get(resource_type, {})]
    return params
