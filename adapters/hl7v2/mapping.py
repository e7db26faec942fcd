"""The mapping engine: HL7 v2 → canonical data (FHIR R4 resources and command fields), driven by
YAML files under ``mappings/`` (``mappings/README.md`` documents the language).

A channel names its mappings in the partner profile (``mappings: [hl7v2/orm-o01, …,
st-marys/overrides]``); they are deep-merged in that order (each file's ``extends`` first), so a
partner's override file can change a table, a default or one path without copying the rest.

Evaluation is a pure function of the parsed message: no I/O, no clock. Every value taken from the
message remembers where it came from, so an error the core raises about ``Patient.birthDate``
is reported to the hospital at ``PID-7``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from adapters.hl7v2.tokenizer import Message
from hub.errors import HubError, Issue

HUB_NS = "https://cgt-hub.org/fhir/NamingSystem/hl7v2"
PATH = re.compile(r"^(?:([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?-(\d+))?((?:\.\d+){0,2})$")
DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")
EMPTY: tuple[Any, ...] = (None, "", [], {})


class MappingError(HubError):
    """The message cannot be mapped: a required field is missing, a value has the wrong type or a
    code is not in the mapping's table. Carries the HL7 table 0357 code of the first problem."""

    def __init__(self, message: str, issues: list[Issue], hl7_code: str) -> None:
        super().__init__(message, issues, status=422, fhir_code="invalid", hl7_code=hl7_code)


class MappingDefinitionError(Exception):
    """A mapping file is broken (our configuration, not the partner's message)."""


# --------------------------------------------------------------------------- loading
def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _load_file(root: Path, name: str) -> dict[str, Any]:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_./-]*", name) or ".." in name:
        raise MappingDefinitionError(f"mapping name {name!r} is not valid")
    path = root / f"{name}.yaml"
    if not path.is_file():
        raise MappingDefinitionError(f"mapping {name!r} not found ({path})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise MappingDefinitionError(f"mapping {name!r} is not a YAML mapping")
    return data


def _resolve(root: Path, name: str, seen: tuple[str, ...]) -> dict[str, Any]:
    if name in seen:
        raise MappingDefinitionError(f"mapping {name!r} extends itself ({' → '.join((*seen, name))})")
    data = _load_file(root, name)
    merged: dict[str, Any] = {}
    for parent in data.get("extends", []) or []:
        merged = _deep_merge(merged, _resolve(root, str(parent), (*seen, name)))
    body = {k: v for k, v in data.items() if k not in ("extends", "id", "description")}
    return _deep_merge(merged, body)


@dataclass(frozen=True)
class MappingSet:
    names: tuple[str, ...]
    messages: dict[str, dict[str, Any]]
    tables: dict[str, dict[str, Any]]
    defaults: dict[str, Any]
    templates: dict[str, Any]

    def spec_for(self, message_type: str, structure: str = "") -> dict[str, Any] | None:
        spec = self.messages.get(message_type)
        if spec is None and structure:
            spec = self.messages.get(structure)
        return spec

    @property
    def message_codes(self) -> set[str]:
        return {t.split("^", 1)[0] for t in self.messages}


def _check_paths(node: Any, where: str) -> None:
    """Paths must be strings: unquoted ``.5`` is the float 0.5 in YAML (and ``.10`` would be 0.1)."""
    if isinstance(node, dict):
        for key in ("path", "each", "each_segment"):
            if key in node:
                values = node[key] if isinstance(node[key], list) else [node[key]]
                for v in values:
                    if not isinstance(v, str):
                        raise MappingDefinitionError(f'{where}: {key} {v!r} must be a quoted string (".5", not .5)')
                    if key != "each_segment":
                        _parse_path(v)
        for key, value in node.items():
            _check_paths(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_paths(value, f"{where}[{i}]")


@lru_cache(maxsize=64)
def load_mapping_set(root: Path, names: tuple[str, ...]) -> MappingSet:
    merged: dict[str, Any] = {}
    for name in names:
        merged = _deep_merge(merged, _resolve(root, name, ()))
    _check_paths(merged.get("messages"), "messages")
    _check_paths(merged.get("templates"), "templates")
    messages = merged.get("messages") or {}
    for mtype, spec in messages.items():
        if not isinstance(spec, dict) or "kind" not in spec or "map" not in spec:
            raise MappingDefinitionError(f"{mtype}: a message mapping needs 'kind' and 'map'")
    return MappingSet(
        names=names,
        messages={str(k).upper(): v for k, v in messages.items()},
        tables={k: dict(v or {}) for k, v in (merged.get("tables") or {}).items()},
        defaults=dict(merged.get("defaults") or {}),
        templates=dict(merged.get("templates") or {}),
    )


SHIPPED = Path(__file__).resolve().parents[2] / "mappings"


def mapping_root(configured: Path) -> Path:
    """The configured mappings directory; a relative one that does not exist where the hub runs
    falls back to the mappings shipped with the code (a fresh directory with only profiles)."""
    if configured.is_dir() or configured.is_absolute():
        return configured.resolve()
    return SHIPPED


# --------------------------------------------------------------------------- values
def hl7_datetime(value: str, tz: ZoneInfo | timezone, *, location: str) -> datetime:
    """An HL7 DTM (to at least the day) as an aware datetime; no offset means the partner's zone."""
    m = DTM.match(value.strip())
    if not m or m.group(3) is None:
        raise MappingError(
            f"{location} is not a date and time (YYYYMMDD[HHMM[SS]][±ZZZZ])",
            [Issue(f"{location}: not a valid date/time", location)],
            "102",
        )
    y, mo, d, hh, mi, ss, frac, off = m.groups()
    try:
        naive = datetime(int(y), int(mo), int(d), int(hh or 0), int(mi or 0), int(ss or 0))
        if frac:
            naive += timedelta(microseconds=int(frac.ljust(6, "0")))
        if off:
            sign = 1 if off[0] == "+" else -1
            offset = timedelta(hours=int(off[1:3]), minutes=int(off[3:5]))
            if offset >= timedelta(hours=24):
                raise ValueError("offset")
            return naive.replace(tzinfo=timezone(sign * offset))
        return naive.replace(tzinfo=tz)
    except ValueError:
        raise MappingError(
            f"{location} is not a valid date/time", [Issue(f"{location}: not a valid date/time", location)], "102"
        ) from None


def fhir_date(value: str, location: str) -> str:
    m = DTM.match(value.strip())
    if not m:
        raise MappingError(f"{location} is not a date", [Issue(f"{location}: not a valid date", location)], "102")
    y, mo, d = m.group(1), m.group(2), m.group(3)
    try:
        datetime(int(y), int(mo or 1), int(d or 1))
    except ValueError:
        raise MappingError(
            f"{location} is not a date", [Issue(f"{location}: not a valid date", location)], "102"
        ) from None
    return "-".join(p for p in (y, mo, d) if p)


# --------------------------------------------------------------------------- evaluation
@dataclass
class Scope:
    msg: Message
    partner: str
    tz: ZoneInfo | timezone
    mappings: MappingSet
    group: range | None = None
    bound: dict[str, int] = field(default_factory=dict)  # segment id → index (each_segment)
    value: str | None = None  # the current repetition (each) for relative paths
    value_path: str = ""
    sources: dict[str, str] = field(default_factory=dict)  # target path → HL7 location

    def child(self, **changes: Any) -> Scope:
        s = Scope(self.msg, self.partner, self.tz, self.mappings, self.group, dict(self.bound), self.value)
        s.value_path = self.value_path
        s.sources = self.sources
        for k, v in changes.items():
            setattr(s, k, v)
        return s

    def segment_index(self, sid: str, occurrence: int) -> int | None:
        if sid in self.bound and occurrence == 0:
            return self.bound[sid]
        positions = self.msg.segment_positions(sid)
        if self.group is not None:
            inside = [p for p in positions if p in self.group]
            if inside:
                return inside[occurrence] if occurrence < len(inside) else None
        return positions[occurrence] if occurrence < len(positions) else None


@lru_cache(maxsize=4096)
def _parse_path(path: str) -> tuple[str | None, int, int, list[int]]:
    m = PATH.match(path.strip())
    if not m:
        raise MappingDefinitionError(f"bad HL7 path {path!r}")
    sid, occ, fld, rest = m.groups()
    parts = [int(p) for p in rest.split(".") if p]
    return sid, int(occ or 0), int(fld or 0), parts


def _dig(msg: Message, raw: str, parts: list[int]) -> str:
    """Component / subcomponent of a raw (first-repetition) value."""
    if parts:
        comps = msg.components(raw)
        raw = comps[parts[0] - 1] if parts[0] - 1 < len(comps) else ""
        if len(parts) > 1:
            subs = msg.subcomponents(raw)
            raw = subs[parts[1] - 1] if parts[1] - 1 < len(subs) else ""
    return raw


def _location(msg: Message, sid: str, index: int | None, occurrence: int) -> str:
    """``OBX[2]`` for the third OBX of the message (its absolute occurrence), ``PID`` for the first."""
    if index is not None:
        occurrence = msg.segment_positions(sid).index(index)
    return f"{sid}[{occurrence}]" if occurrence else sid


def raw_at(scope: Scope, path: str) -> tuple[str, str]:
    """The raw (still escaped) value at a path and its absolute location."""
    sid, occ, fld, parts = _parse_path(path)
    msg = scope.msg
    if sid is None:  # relative to the current repetition
        if scope.value is None:
            raise MappingDefinitionError(f"relative path {path!r} outside 'each'")
        return _dig(msg, scope.value, parts), scope.value_path + path
    index = scope.segment_index(sid, occ)
    location = _location(msg, sid, index, occ) + f"-{fld}" + "".join(f".{p}" for p in parts)
    if index is None:
        return "", location
    seg = msg.segments[index]
    raw = seg[fld] if fld < len(seg) else ""
    if sid == "MSH" and fld in (1, 2):
        return raw, location
    rep = msg.enc.repetition
    if rep and rep in raw:
        raw = raw.split(rep, 1)[0]
    return _dig(msg, raw, parts), location


def _field_repetitions(scope: Scope, path: str) -> tuple[list[str], str]:
    sid, occ, fld, parts = _parse_path(path)
    if sid is None or parts:
        raise MappingDefinitionError(f"'each' needs a field path like PID-3, not {path!r}")
    index = scope.segment_index(sid, occ)
    location = _location(scope.msg, sid, index, occ) + f"-{fld}"
    if index is None:
        return [], location
    seg = scope.msg.segments[index]
    raw = seg[fld] if fld < len(seg) else ""
    return ([r for r in scope.msg.repetitions(raw)] if raw else []), location


def _hd_system(scope: Scope, raw: str) -> str:
    msg = scope.msg
    subs = [msg.text(s).strip() for s in msg.subcomponents(raw)]
    namespace = subs[0] if subs else ""
    universal = subs[1] if len(subs) > 1 else ""
    kind = subs[2].upper() if len(subs) > 2 else ""
    table = scope.mappings.tables.get("assigning_authorities", {})
    for key in (namespace, universal):
        if key and key in table:
            return str(table[key])
    if universal and kind == "ISO" and re.fullmatch(r"[0-2](\.(0|[1-9]\d*))+", universal):
        return f"urn:oid:{universal}"
    if universal and kind in ("URI", "URL") and re.match(r"^[a-z][a-z0-9+.-]*:", universal):
        return universal
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", namespace or universal or "local").strip("-") or "local"
    return f"{HUB_NS}/{scope.partner}/{slug}"


def _convert(scope: Scope, raw: str, kind: str, location: str) -> Any:
    msg = scope.msg
    if kind == "raw":
        return raw
    if kind == "hd_system":
        return _hd_system(scope, raw) if raw.strip() else None
    if kind == "text":  # all repetitions of a text field, one line each
        return "\n".join(msg.text(r) for r in msg.repetitions(raw)).strip()
    value = msg.first_leaf(raw).strip()
    if value in ('""',):  # HL7 "delete this value": nothing to map
        return None
    if not value:
        return None
    if kind == "string":
        return value
    if kind == "upper":
        return value.upper()
    if kind == "lower":
        return value.lower()
    if kind == "date":
        return fhir_date(value, location)
    if kind == "datetime":
        return hl7_datetime(value, scope.tz, location=location).isoformat()
    if kind == "decimal":
        try:
            float(value)
        except ValueError:
            raise MappingError(
                f"{location} is not a number", [Issue(f"{location}: not a number", location)], "102"
            ) from None
        return value
    if kind == "integer":
        if not re.fullmatch(r"[+-]?\d+", value):
            raise MappingError(f"{location} is not an integer", [Issue(f"{location}: not an integer", location)], "102")
        return int(value)
    raise MappingDefinitionError(f"unknown conversion {kind!r}")


def _table(scope: Scope, name: str, value: Any, on_missing: str, location: str) -> Any:
    table = scope.mappings.tables.get(name)
    if table is None:
        raise MappingDefinitionError(f"table {name!r} is not defined")
    key = str(value)
    if key in table:
        return table[key]
    if key.upper() in table:
        return table[key.upper()]
    if "*" in table:
        return table["*"]
    if on_missing == "keep":
        return value
    if on_missing == "drop":
        return None
    raise MappingError(
        f"{location} value {key[:40]!r} is not one we know ({name})",
        [Issue(f"{location}: {key[:40]!r} is not in table {name}", location)],
        "103",
    )


def _required(location: str, target: str) -> MappingError:
    return MappingError(
        f"{location} is required ({target})", [Issue(f"{location} is required for {target}", location)], "101"
    )


Evaluator = Callable[[Any, Scope, str], Any]


def evaluate(node: Any, scope: Scope, target: str = "") -> Any:
    if isinstance(node, dict):
        if "path" in node:
            return _eval_path(node, scope, target)
        if "each" in node:
            reps, location = _field_repetitions(scope, str(node["each"]))
            items = []
            for i, rep in enumerate(reps):
                child = scope.child(value=rep)
                child.value_path = location if i == 0 else f"{location}[{i + 1}]"
                item = evaluate(node.get("do", {"path": "."}), child, f"{target}[{i}]")
                if item not in EMPTY:
                    items.append(item)
            return items
        if "each_segment" in node:
            sid = str(node["each_segment"])
            items = []
            positions = scope.msg.segment_positions(sid)
            if scope.group is not None:
                positions = [p for p in positions if p in scope.group]
            for i, pos in enumerate(positions):
                child = scope.child(bound={**scope.bound, sid: pos})
                item = evaluate(node.get("do", {}), child, f"{target}[{i}]")
                if item not in EMPTY:
                    items.append(item)
            return items
        if "first" in node:
            fallback: dict[str, str] = {}
            for option in node["first"]:
                before = set(scope.sources)
                value = evaluate(option, scope, target)
                if value not in EMPTY:
                    return value
                for key in set(scope.sources) - before:  # an empty option does not own the place
                    fallback.setdefault(key, scope.sources.pop(key))
            for key, loc in fallback.items():
                scope.sources.setdefault(key, loc)
            return None
        if "concat" in node:
            parts = [evaluate(p, scope, target) for p in node["concat"]]
            joined = str(node.get("sep", " ")).join(str(p) for p in parts if p not in EMPTY)
            return joined or None
        if "const" in node:
            return node["const"]
        if "default" in node:
            found: Any = scope.mappings.defaults
            for key in str(node["default"]).split("."):
                found = found.get(key) if isinstance(found, dict) else None
            return found
        if "template" in node:
            name = str(node["template"])
            if name not in scope.mappings.templates:
                raise MappingDefinitionError(f"template {name!r} is not defined")
            return evaluate(scope.mappings.templates[name], scope, target)
        if "partner" in node:
            return scope.partner
        required = node.get("_require") or []
        out = {}
        for key, sub in node.items():
            if key == "_require":
                continue
            value = evaluate(sub, scope, f"{target}.{key}" if target else str(key))
            if value not in EMPTY:
                out[key] = value
        if any(r not in out for r in required):
            return {}
        return out
    if isinstance(node, list):
        values = [evaluate(item, scope, f"{target}[{i}]") for i, item in enumerate(node)]
        return [v for v in values if v not in EMPTY]
    return node


def _eval_path(node: dict[str, Any], scope: Scope, target: str) -> Any:
    paths = node["path"] if isinstance(node["path"], list) else [node["path"]]
    kind = str(node.get("as", "string"))
    value: Any = None
    location = ""
    first_location = ""
    for path in paths:
        raw, location = raw_at(scope, str(path))
        first_location = first_location or location
        value = _convert(scope, raw, kind, location)
        if value not in EMPTY:
            break
    if value in EMPTY:
        location = first_location
    if value not in EMPTY and "table" in node:
        value = _table(scope, str(node["table"]), value, str(node.get("on_missing", "error")), location)
    if value in EMPTY and "or" in node:
        value = node["or"]
    if value in EMPTY:
        if node.get("required"):
            raise _required(location or str(paths[0]), str(node.get("name", target)))
        if target and location:
            scope.sources.setdefault(target, location)  # so a core error about it still has a place
        return None
    if target:
        scope.sources.setdefault(target, location)
    max_length = node.get("max_length")
    if max_length and isinstance(value, str) and len(value) > int(max_length):
        raise MappingError(
            f"{location} is longer than {max_length}",
            [Issue(f"{location}: longer than {max_length} characters", location)],
            "104",
        )
    return value


# --------------------------------------------------------------------------- groups and results
@dataclass
class Mapped:
    """The result of mapping one message: one item per group (one per order in an ORM)."""

    kind: str
    message_type: str
    items: list[dict[str, Any]]
    sources: list[dict[str, str]]
    spec: dict[str, Any]

    def locate(self, index: int, location: str | None, prefix: str = "") -> str | None:
        """Translate a core error location (``Patient.birthDate``) to where it came from (``PID-7``)."""
        if not location:
            return location
        sources = self.sources[index] if index < len(self.sources) else {}
        head, _, rest = location.partition(".")
        lowered = f"{head[:1].lower()}{head[1:]}{'.' + rest if rest else ''}"
        candidates = [prefix + location, prefix + lowered, location, lowered] if prefix else [location, lowered]
        for cand in candidates:
            if cand in sources:
                return sources[cand]
            for key, loc in sources.items():
                if key.startswith(cand + ".") or key.startswith(cand + "["):
                    return loc
        return location


def _groups(msg: Message, starter: str | None) -> Iterator[range | None]:
    if not starter:
        yield None
        return
    starts = msg.segment_positions(starter)
    if not starts:
        yield None
        return
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(msg.segments)
        yield range(start, end)


def map_message(msg: Message, mappings: MappingSet, *, partner: str, tz: ZoneInfo | timezone) -> Mapped | None:
    """None if the mappings know nothing of this message type."""
    spec = mappings.spec_for(msg.message_type, msg.structure)
    if spec is None:
        return None
    items: list[dict[str, Any]] = []
    sources: list[dict[str, str]] = []
    problems: list[Issue] = []
    first_error: MappingError | None = None
    for group in _groups(msg, spec.get("group_by")):
        scope = Scope(msg, partner, tz, mappings, group)
        try:
            item = evaluate(spec["map"], scope)
        except MappingError as exc:
            first_error = first_error or exc
            problems += exc.issues
            continue
        items.append(item if isinstance(item, dict) else {"value": item})
        sources.append(scope.sources)
    if first_error is not None:
        raise MappingError(first_error.message, problems, first_error.hl7_code)
    return Mapped(str(spec["kind"]), msg.message_type, items, sources, spec)
