"""``$validate`` (http://hl7.org/fhir/R4/resource-operation-validate.html), without HTTP.

The body is the resource, or a ``Parameters`` with ``resource``, ``mode`` and ``profile``. The
answer is an OperationOutcome with 200 whether or not the resource is valid; a 4xx means it could
not be validated at all (no resource of the URL's type to validate).

* type level (``POST [base]/<Type>/$validate``): would the hub accept it as a create? A partner's
  ServiceRequest is a therapy order, so it is checked against ``cgt-therapy-order``.
* instance level (``POST [base]/<Type>/<id>/$validate``): would it be accepted as an update of
  that resource (its id must be the URL's)? ``GET`` validates the stored resource itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.api import conformance
from hub.api.outcomes import operation_outcome
from hub.errors import HubError, Issue

MODES = ("create", "update", "delete")


class CannotValidate(HubError):
    def __init__(self, message: str, location: str) -> None:
        super().__init__(message, [Issue(message, location)], status=400, fhir_code="invalid", hl7_code="100")


@dataclass
class ValidationInput:
    resource: dict[str, Any]
    profiles: list[str] = field(default_factory=list)
    mode: str | None = None


def validation_input(rtype: str, doc: dict[str, Any], profiles: list[str]) -> ValidationInput:
    """The resource, the profiles and the mode a ``$validate`` body (resource or Parameters) names."""
    found = ValidationInput(doc, list(profiles))
    if doc.get("resourceType") == "Parameters":
        found.resource = {}
        parameters = doc.get("parameter") or []
        if not isinstance(parameters, list) or not all(isinstance(p, dict) for p in parameters):
            raise CannotValidate("Parameters.parameter must be a list of parameters", "Parameters.parameter")
        for index, param in enumerate(parameters):
            name = param.get("name")
            if name == "resource" and isinstance(param.get("resource"), dict):
                found.resource = param["resource"]
            elif name == "profile" and param.get("valueUri") is not None:
                found.profiles.append(str(param["valueUri"]))
            elif name == "mode":
                mode = param.get("valueCode")
                if mode not in MODES:
                    raise CannotValidate(
                        f"mode must be one of {', '.join(MODES)}", f"Parameters.parameter[{index}].valueCode"
                    )
                found.mode = str(mode)
        where = "Parameters.parameter.where(name='resource').resource.resourceType"
    else:
        where = f"{doc.get('resourceType') or 'resource'}.resourceType"
    if found.resource.get("resourceType") != rtype:
        what = found.resource.get("resourceType")
        raise CannotValidate(f"$validate on {rtype} needs a {rtype}" + (f", not a {what}" if what else ""), where)
    return found


def outcome(issues: list[Issue]) -> dict[str, Any]:
    if not issues:
        return operation_outcome([Issue("no issues found", severity="information")], "informational")
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    return operation_outcome(issues, "invalid" if errors else "informational")


def for_update(rtype: str, rid: str, given: ValidationInput) -> list[Issue]:
    """Issues of ``given`` as an update of ``<rtype>/<rid>``, as the update would find them."""
    issues: list[Issue] = []
    if given.resource.get("id") != rid:
        issues.append(Issue("the resource's id must equal the id in the URL", f"{rtype}.id"))
    return issues + conformance.issues_for(given.resource, given.profiles)
