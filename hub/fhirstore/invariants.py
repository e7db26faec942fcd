"""R4 invariants fhir.resources does not check, on the JSON as sent (LIBRARIES.md: no invariants).

* ele-1: every element has a value or children (``name: [{}]``, ``identifier: [{"id": "a"}]``,
  ``"meta": {}``, ``"given": [""]``). An empty array (``extension: []``) is not refused here:
  the order flow reads it as "none given".
* ext-1: an extension has either nested extensions or a ``value[x]``, not both and not neither.
* A choice element (``deceased[x]``) carries one type: given twice, it is located at
  ``Patient.deceased[x]`` (fhir.resources reports it at the parent, in its own words).

The walk follows the fhir.resources model's field types, like ``json_types``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from hub.errors import Issue
from hub.fhirstore.json_types import fields_of

# Keys that are not children in the sense of ele-1 (``fhir_comments`` is a JSON comment).
_NOT_CHILDREN = frozenset({"id", "fhir_comments"})
CHOICE_CODE = "structure"


@lru_cache(maxsize=512)
def choice_groups(model: type) -> dict[str, tuple[str, ...]]:
    """``deceased`` → (``deceasedBoolean``, ``deceasedDateTime``), from the model's field metadata."""
    groups: dict[str, list[str]] = {}
    for name, field in getattr(model, "model_fields", {}).items():
        extra = field.json_schema_extra
        group = extra.get("one_of_many") if isinstance(extra, dict) else None
        if isinstance(group, str):
            groups.setdefault(group, []).append(field.alias or name)
    return {group: tuple(names) for group, names in groups.items()}


def _is_empty(value: dict[str, Any]) -> bool:
    return not any(key not in _NOT_CHILDREN for key in value)


def _empty_issue(where: str, what: str) -> Issue:
    return Issue(f"{where} is {what}: every FHIR element has a value or children (ele-1)", where, code="invariant")


def invariant_issues(model: type, value: dict[str, Any], where: str) -> list[Issue]:
    """Every ele-1, ext-1 and choice violation in ``value`` (an instance of ``model``)."""
    issues: list[Issue] = []
    for group, names in choice_groups(model).items():
        given = [n for n in names if n in value or f"_{n}" in value]
        if len(given) > 1:
            at = f"{where}.{group}[x]"
            issues.append(
                Issue(f"{at} is given {len(given)} times ({', '.join(given)}); it takes one type", at, code="structure")
            )
    if model.__name__ == "Extension":
        has_value = any(key.startswith("value") for key in value)
        nested = value.get("extension")
        if has_value == bool(nested):
            what = "both a value[x] and extensions" if has_value else "neither a value[x] nor extensions"
            issues.append(
                Issue(f"{where} has {what}: an extension has one or the other (ext-1)", where, code="invariant")
            )
    fields = fields_of(model)
    for key, item in value.items():
        if key == "resourceType":
            continue
        if key.startswith("_") and key[1:] in fields:
            issues += _primitive_extension_issues(value.get(key[1:]), item, f"{where}.{key[1:]}")
            continue
        entry = fields.get(key)
        if entry is None:
            continue  # unknown elements are the model's to report; a true union is not an element
        _kind, is_list, element_model = entry
        at = f"{where}.{key}"
        if isinstance(item, list):  # an empty array is left to the hub's own handling (e.g. no sites)
            for index, element in enumerate(item if is_list else []):
                issues += _element_issues(element_model, element, f"{at}[{index}]")
        elif not is_list:
            issues += _element_issues(element_model, item, at)
    return issues


def _element_issues(model: type | None, value: Any, where: str) -> list[Issue]:
    if model is None:
        if value != "":
            return []
        message = f"{where} is an empty string: a FHIR value has at least one character (ele-1); leave it out"
        return [Issue(message, where, code="invariant")]
    if not isinstance(value, dict):
        return []  # the model (or json_types) reports the wrong shape
    if model.__name__ == "Resource":  # contained: the type is in the JSON
        from fhir.resources.R4B import get_fhir_model_class

        try:
            model = get_fhir_model_class(str(value.get("resourceType")))
        except ValueError:
            return []  # reported by json_types
        return invariant_issues(model, value, where)
    if _is_empty(value):
        return [_empty_issue(where, "empty")]
    return invariant_issues(model, value, where)


def _primitive_extension_issues(primitive: Any, companion: Any, where: str) -> list[Issue]:
    """``_name``: the id/extensions of primitive ``name``; with no value, it needs extensions."""
    if isinstance(companion, dict):
        pairs = [(primitive, companion, where)]
    elif isinstance(companion, list):
        values = primitive if isinstance(primitive, list) else []
        pairs = [
            (values[i] if i < len(values) else None, c, f"{where}[{i}]")
            for i, c in enumerate(companion)
            if isinstance(c, dict)
        ]
    else:
        return []
    issues: list[Issue] = []
    for value, ext, at in pairs:
        if value is None and not ext.get("extension"):
            issues.append(_empty_issue(at, "without a value or extensions"))
        else:
            issues += invariant_issues(_primitive_extension_model(), ext, at)
    return issues


def _primitive_extension_model() -> type:
    from fhir.resources.R4B.fhirprimitiveextension import FHIRPrimitiveExtension

    return FHIRPrimitiveExtension
