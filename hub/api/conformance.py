"""Profiles in ``conformance/`` (StructureDefinitions and ValueSets), interpreted on write and by
``$validate``.

What is interpreted from a profile's differential (and what is not):

* cardinality (``min``/``max``) of elements, including slices of ``extension`` (a slice named
  ``x`` of ``Extension.extension`` is the sub-extension with ``url = 'x'``; a slice of a resource's
  ``extension`` is the extension whose url is the slice's type profile);
* ``required`` bindings to the ValueSets in ``conformance/`` (codes listed in ``compose.include``);
* every ``constraint`` (invariant), evaluated as FHIRPath with fhirpathpy in the element's context;
* extension profiles, applied to each extension instance carrying their url.

Not interpreted: other slicing rules, type choices, ``targetProfile`` (reference targets are
checked by invariants instead), must-support. Structure (types, cardinality of the base resource,
unknown elements) is fhir.resources R4B's job (``hub.fhirstore.validation``). Every issue found is
reported, with a FHIRPath location, not just the first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from fhirpathpy import compile as fhirpath_compile

from hub.errors import Issue, ValidationFailed
from hub.fhirstore.validation import validate
from hub.orders import fhir

CONFORMANCE_DIR = Path(__file__).resolve().parents[2] / "conformance"
HUB = "https://cgt-hub.org/fhir"
THERAPY_ORDER = f"{HUB}/StructureDefinition/cgt-therapy-order"
CGT_PATIENT = f"{HUB}/StructureDefinition/cgt-patient"
SITE_EXTENSION = fhir.SITE_EXTENSION  # one definition, in the core's FHIR shapes
SITE_ROLE_SYSTEM = f"{HUB}/CodeSystem/site-role"

Evaluator = Callable[..., list[Any]]


@lru_cache(maxsize=512)
def _compiled(expression: str) -> Evaluator:
    fn: Evaluator = fhirpath_compile(expression)
    return fn


_SIMPLE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*$")


def _navigate(value: Any, expression: str) -> list[Any]:
    """A plain element path (``a.b.c``), as FHIRPath evaluates it on JSON: lists flatten, absent
    elements vanish. Six times faster than the general engine for the cardinality rules."""
    items = [value]
    for name in expression.split("."):
        nxt: list[Any] = []
        for item in items:
            if isinstance(item, dict) and name in item:
                child = item[name]
                nxt.extend(child if isinstance(child, list) else [child])
        items = nxt
    return items


def evaluate(value: Any, expression: str, resource: Any = None) -> list[Any]:
    """``expression`` on ``value``; ``resource``: what ``%resource`` names (the resource that holds
    ``value``; ``value`` itself when not given)."""
    if _SIMPLE.match(expression):
        return _navigate(value, expression)
    try:
        return list(_compiled(expression)(value, {"resource": value if resource is None else resource}))
    except Exception as exc:  # fhirpathpy raises bare Exceptions on type errors in odd input
        raise _EvaluationError(str(exc)) from exc


class _EvaluationError(Exception):
    pass


@dataclass(frozen=True)
class ValueSetCodes:
    url: str
    codes: frozenset[tuple[str, str]]  # (system, code)

    def contains(self, system: str | None, code: str) -> bool:
        if system is None:
            return any(c == code for _, c in self.codes)
        return (system, code) in self.codes


@dataclass(frozen=True)
class Rule:
    location: str  # FHIRPath shown in issues (relative to the resource root)
    select: str  # FHIRPath selecting the element (relative to the profiled root)
    min: int = 0
    max: int | None = None
    binding: str | None = None
    constraints: tuple[tuple[str, str, str, str], ...] = ()  # (key, severity, human, expression)


@dataclass
class Profile:
    url: str
    type: str
    title: str
    rules: list[Rule] = field(default_factory=list)
    extensions: dict[str, str] = field(default_factory=dict)  # extension url -> its profile url

    def check(self, value: Any, root: str, registry: Registry, resource: Any = None) -> list[Issue]:
        """``resource``: the resource ``value`` is part of (``%resource`` in invariants)."""
        resource = value if resource is None else resource
        issues: list[Issue] = []
        for rule in self.rules:
            where = f"{root}{rule.location}"
            try:
                selected = evaluate(value, rule.select) if rule.select else [value]
            except _EvaluationError:
                issues.append(Issue(f"{self.url}: cannot evaluate {rule.select}", where, code="processing"))
                continue
            if len(selected) < rule.min:
                issues.append(Issue(f"{where} is required (min {rule.min}) by {self.title}", where, code="required"))
            if rule.max is not None and len(selected) > rule.max:
                issues.append(
                    Issue(f"{where} may occur at most {rule.max} time(s) in {self.title}", where, code="structure")
                )
            if rule.binding:
                issues += registry.check_binding(rule.binding, selected, where)
            for key, severity, human, expression in rule.constraints:
                for index, item in enumerate(selected):
                    at = where if len(selected) == 1 else f"{where}[{index}]"
                    try:
                        result = evaluate(item, expression, resource)
                    except _EvaluationError:
                        result = [False]
                    if result and result != [True]:
                        level = "warning" if severity == "warning" else "error"
                        issues.append(Issue(f"{key}: {human}", at, level, code="invariant"))
        for ext_url, profile_url in self.extensions.items():
            profile = registry.profiles.get(profile_url)
            if profile is None:
                continue
            extensions = value.get("extension") if isinstance(value, dict) else None
            for index, ext in enumerate(extensions if isinstance(extensions, list) else []):
                if isinstance(ext, dict) and ext.get("url") == ext_url:
                    issues += profile.check(ext, f"{root}.extension[{index}]", registry, resource)
        return issues


def _select_of(element_id: str, type_profiles: dict[str, str]) -> tuple[str, str]:
    """Element id (``ServiceRequest.extension:site``) → (location, FHIRPath select)."""
    parts = element_id.split(".")[1:]
    select: list[str] = []
    for part in parts:
        name, _, slice_name = part.partition(":")
        if slice_name and name == "extension":
            url = type_profiles.get(f"{name}:{slice_name}", slice_name)
            select.append(f"extension.where(url='{url}')")
        else:
            select.append(name)
    joined = ".".join(select)
    return ("." + joined if joined else ""), joined


def _load_profile(doc: dict[str, Any]) -> Profile:
    profile = Profile(doc["url"], doc["type"], doc.get("title") or doc["name"])
    elements = doc.get("differential", {}).get("element", [])
    type_profiles: dict[str, str] = {}
    for el in elements:
        last = el["id"].split(".")[-1]
        for t in el.get("type", []):
            if t.get("code") == "Extension" and t.get("profile"):
                type_profiles[last] = t["profile"][0]
                profile.extensions[t["profile"][0]] = t["profile"][0]
    for el in elements:
        if el.get("fixedUri") is not None:
            continue
        location, select = _select_of(el["id"], type_profiles)
        max_text = el.get("max")
        constraints = tuple(
            (c["key"], c.get("severity", "error"), c["human"], c["expression"])
            for c in el.get("constraint", [])
            if c.get("expression")
        )
        binding = el.get("binding", {})
        profile.rules.append(
            Rule(
                location=location,
                select=select,
                min=int(el.get("min", 0)),
                max=None if max_text in (None, "*") else int(max_text),
                binding=binding.get("valueSet") if binding.get("strength") == "required" else None,
                constraints=constraints,
            )
        )
    return profile


@dataclass
class Registry:
    profiles: dict[str, Profile]
    value_sets: dict[str, ValueSetCodes]

    def check_binding(self, url: str, values: list[Any], where: str) -> list[Issue]:
        vs = self.value_sets.get(url)
        if vs is None:
            return [Issue(f"value set {url} is not available to check {where}", where, "warning", "not-supported")]
        issues = []
        for value in values:
            ok = False
            if isinstance(value, str):
                ok = vs.contains(None, value)
            elif isinstance(value, dict) and "coding" in value:
                ok = any(
                    isinstance(c, dict) and vs.contains(c.get("system"), str(c.get("code")))
                    for c in value.get("coding") or []
                )
            elif isinstance(value, dict) and "code" in value:
                ok = vs.contains(value.get("system"), str(value.get("code")))
            if not ok:
                known = ", ".join(sorted(c for _, c in vs.codes))
                issues.append(Issue(f"{where} must be a code from {url} ({known})", where, code="code-invalid"))
        return issues

    def check(self, resource: dict[str, Any], profile_url: str) -> list[Issue]:
        profile = self.profiles.get(profile_url)
        if profile is None:
            return [Issue(f"profile {profile_url} is not known to this server", "meta.profile", code="not-supported")]
        rtype = resource.get("resourceType")
        if rtype != profile.type:
            return [Issue(f"profile {profile_url} is for {profile.type}, not {rtype}", "resourceType")]
        return profile.check(resource, profile.type, self)


@lru_cache(maxsize=1)
def registry() -> Registry:
    profiles: dict[str, Profile] = {}
    value_sets: dict[str, ValueSetCodes] = {}
    for path in sorted(CONFORMANCE_DIR.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("resourceType") == "StructureDefinition":
            profiles[doc["url"]] = _load_profile(doc)
        elif doc.get("resourceType") == "ValueSet":
            codes = {
                (inc["system"], c["code"]) for inc in doc.get("compose", {}).get("include", []) for c in inc["concept"]
            }
            value_sets[doc["url"]] = ValueSetCodes(doc["url"], frozenset(codes))
    return Registry(profiles, value_sets)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def control_characters(value: Any, path: str) -> list[Issue]:
    """FHIR strings may not contain control characters other than tab, CR and LF (and PostgreSQL
    text cannot hold NUL): every place they occur, as an issue."""
    if isinstance(value, str):
        found = _CONTROL.search(value)
        return [Issue("control characters are not allowed in FHIR strings", path, code="value")] if found else []
    if isinstance(value, dict):
        return [i for k, v in value.items() for i in control_characters(v, f"{path}.{_CONTROL.sub('?', str(k))}")]
    if isinstance(value, list):
        return [i for n, v in enumerate(value) for i in control_characters(v, f"{path}[{n}]")]
    return []


def issues_for(resource: dict[str, Any], profiles: list[str] | None = None) -> list[Issue]:
    """Every issue: structure (fhir.resources R4B + bindings it skips), then each profile the
    resource claims in ``meta.profile`` that this server knows, plus ``profiles``."""
    rtype = resource.get("resourceType")
    issues: list[Issue] = control_characters(resource, rtype if isinstance(rtype, str) and rtype.isalpha() else "")
    if issues:
        return issues
    try:
        validate(resource)
    except ValidationFailed as exc:
        issues += exc.issues
        if resource.get("resourceType") is None or any(i.location == "resourceType" for i in exc.issues):
            return issues
    reg = registry()
    meta = resource.get("meta")
    listed = meta.get("profile") if isinstance(meta, dict) else None  # any other shape: a structure issue
    claimed = [p for p in listed if isinstance(p, str) and p in reg.profiles] if isinstance(listed, list) else []
    required = {i.location for i in issues if i.code == "required"}
    for url in dict.fromkeys([*claimed, *(profiles or [])]):  # a missing element is said once
        issues += [i for i in reg.check(resource, url) if i.code != "required" or i.location not in required]
    return issues


def require_valid(resource: dict[str, Any], found: list[Issue] | None = None) -> None:
    """Raise ValidationFailed with every error; ``found``: issues already computed for it."""
    issues = [i for i in (issues_for(resource) if found is None else found) if i.severity in ("error", "fatal")]
    if issues:
        rtype = resource.get("resourceType", "resource")
        raise ValidationFailed(f"{rtype} does not conform ({len(issues)} issue(s))", issues)
