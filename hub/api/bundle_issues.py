"""Issues of a transaction Bundle's entries, located in the Bundle.

An entry's issue says where it is inside that entry's resource (``Patient.birthDate``); in the
answer to the Bundle it must say where it is in the Bundle, as FHIRPath:
``Bundle.entry[1].resource.birthDate``. A failed transaction also lists the validation issues of
the entries it had not reached yet, so a partner fixes the whole Bundle in one round.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import Any

from hub.errors import Issue

# A location that starts with a resource type (``ServiceRequest.subject``, ``Patient``).
_RESOURCE_ROOT = re.compile(r"^[A-Z][A-Za-z]*(?=$|[.\[])")
# A plain path relative to the resource (``meta.profile``, ``resourceType``).
_RELATIVE = re.compile(r"^[a-z][A-Za-z0-9]*([.\[].*)?$")
_REQUEST_HEADERS = {"If-None-Exist": "ifNoneExist", "If-Match": "ifMatch"}


def entry_location(location: str | None, index: int) -> str:
    """The FHIRPath of ``location`` (relative to entry ``index``'s resource) within the Bundle."""
    entry = f"Bundle.entry[{index}]"
    if not location:
        return entry
    if location.startswith("Bundle."):
        return location
    if location in _REQUEST_HEADERS:
        return f"{entry}.request.{_REQUEST_HEADERS[location]}"
    root = _RESOURCE_ROOT.match(location)
    if root is not None:
        return f"{entry}.resource{location[root.end() :]}"
    if _RELATIVE.match(location):
        return f"{entry}.resource.{location}"
    return entry


def in_entry(issues: Iterable[Issue], index: int) -> list[Issue]:
    """``issues`` of entry ``index``, located in the Bundle. A location that is not a path into the
    resource (``body``) keeps its text in the message."""
    out = []
    for issue in issues:
        where = entry_location(issue.location, index)
        message = issue.message
        if issue.location and where == f"Bundle.entry[{index}]" and issue.location not in message:
            message = f"{issue.location}: {message}"
        out.append(dataclasses.replace(issue, message=message, location=where))
    return out


def pending_issues(
    entries: list[dict[str, Any]],
    pending: Iterable[int],
    check: Callable[[int, dict[str, Any]], list[Issue] | None],
) -> list[Issue]:
    """The errors ``check`` finds in the resources of the entries not processed yet (pure checks:
    no database), located in the Bundle."""
    found: list[Issue] = []
    for index in pending:
        resource = entries[index].get("resource")
        if not isinstance(resource, dict):
            continue
        issues = check(index, resource) or []
        found += in_entry((i for i in issues if i.severity in ("error", "fatal")), index)
    return found
