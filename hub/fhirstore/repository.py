"""All queries of the FHIR resource store.

Versions are never overwritten: every write inserts a ``resource_version`` row and moves the
``resource`` row (the current version) forward. Search indexes are derived data, rewritten with the
current version. Audit entries for resources carry the version and content hash (the content itself
lives, immutable, in ``resource_version``), so the audit chain binds every version's exact bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, or_, select
from sqlalchemy.orm import Session

from hub import canonical
from hub.db.bulk import insert_tables
from hub.db.models import Resource, ResourceVersion, SearchDate, SearchReference, SearchToken, table_of
from hub.db.uow import Work
from hub.errors import Conflict, Issue, NotFound, ValidationFailed
from hub.fhirstore import indexing
from hub.fhirstore.validation import validate
from hub.ids import uuid7


@dataclass(frozen=True)
class Stored:
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    content: dict[str, Any]
    content_hash: str
    deleted: bool = False
    text: str = field(default="", repr=False)  # the canonical JSON stored (and hashed)

    @property
    def ref(self) -> str:
        return f"{self.resource_type}/{self.id}"

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'


def _row_to_stored(row: Any) -> Stored:
    return Stored(
        row.resource_type,
        row.id,
        row.version_id,
        row.last_updated,
        canonical.loads(row.content),
        row.content_hash,
        bool(row.deleted),
        row.content,
    )


def new_id() -> str:
    return uuid7()


class ResourceBuffer:
    """The resource rows a job has written, flushed in a handful of executemany statements at the
    end of the job (or of a nested attempt) instead of ~8 statements per resource. Reads within
    the job see these pending versions first."""

    def __init__(self) -> None:
        self.current: dict[tuple[str, str], Stored] = {}
        self.new_keys: set[tuple[str, str]] = set()
        self.updated_keys: set[tuple[str, str]] = set()
        self.versions: list[dict[str, Any]] = []

    def clear(self) -> None:
        self.current.clear()
        self.new_keys.clear()
        self.updated_keys.clear()
        self.versions.clear()

    def flush(self, session: Session) -> None:
        if not self.versions:
            return
        conn = session.connection()
        rows = lambda keys: [  # noqa: E731
            {
                "resource_type": k[0],
                "id": k[1],
                "version_id": self.current[k].version_id,
                "last_updated": self.current[k].last_updated,
                "deleted": self.current[k].deleted,
                "content": self.current[k].text,
                "content_hash": self.current[k].content_hash,
            }
            for k in sorted(keys)
        ]
        if self.updated_keys:
            updates = [{("k_" + key): value for key, value in r.items()} for r in rows(self.updated_keys)]
            conn.execute(_UPDATE_CURRENT, updates)
            owners = [{"k_type": k[0], "k_id": k[1]} for k in sorted(self.updated_keys)]
            for stmt in _DROP_INDEXES:
                conn.execute(stmt, owners)
        tokens: list[dict[str, Any]] = []
        refs: list[dict[str, Any]] = []
        dates: list[dict[str, Any]] = []
        for (rtype, rid), stored in self.current.items():
            if stored.deleted:
                continue
            ex = indexing.extract(stored.content)
            tokens += [
                {"resource_type": rtype, "id": rid, "param": p, "system": sy, "value": v} for p, sy, v in ex.tokens
            ]
            refs += [{"resource_type": rtype, "id": rid, "param": p, "target": t} for p, t in ex.references]
            dates += [
                {"resource_type": rtype, "id": rid, "param": p, "value": v, "value_end": e} for p, v, e in ex.dates
            ]
        insert_tables(
            session,
            [
                (_RES, rows(self.new_keys) if self.new_keys else []),
                (_VER, self.versions),
                (table_of(SearchToken), tokens),
                (table_of(SearchReference), refs),
                (table_of(SearchDate), dates),
            ],
        )
        self.clear()

    def pending_identifier(self, rtype: str, system: str | None, value: str) -> list[Stored]:
        found = []
        for (t, _), stored in self.current.items():
            if t != rtype or stored.deleted:
                continue
            for ident in stored.content.get("identifier", []) or []:
                if str(ident.get("value")) == value and (system is None or ident.get("system") == system):
                    found.append(stored)
                    break
        return found


_RES = table_of(Resource)
_VER = table_of(ResourceVersion)
_UPDATE_CURRENT = (
    _RES.update()
    .where(_RES.c.resource_type == bindparam("k_resource_type"), _RES.c.id == bindparam("k_id"))
    .values(
        version_id=bindparam("k_version_id"),
        last_updated=bindparam("k_last_updated"),
        deleted=bindparam("k_deleted"),
        content=bindparam("k_content"),
        content_hash=bindparam("k_content_hash"),
    )
)
_DROP_INDEXES = [
    t.delete().where(t.c.resource_type == bindparam("k_type"), t.c.id == bindparam("k_id"))
    for t in (table_of(SearchToken), table_of(SearchReference), table_of(SearchDate))
]
BUFFER_KEY = "fhirstore"
# Hot-path statements, built once, on Core tables (rows, not ORM objects).
_TOK = table_of(SearchToken)
_EXISTING = select(_RES.c.id).where(
    _RES.c.resource_type == bindparam("t"),
    _RES.c.id.in_(bindparam("ids", expanding=True)),
    _RES.c.deleted.is_(False),
)
_READ = select(_RES).where(_RES.c.resource_type == bindparam("t"), _RES.c.id == bindparam("i"))
_TOKEN_IDS = select(_TOK.c.id).where(
    _TOK.c.resource_type == bindparam("t"), _TOK.c.param == "identifier", _TOK.c.value == bindparam("v")
)
# An identifier lookup is two single-table statements, not one with a subquery: as one statement,
# PostgreSQL without statistics (a new database, before autovacuum's first ANALYZE) planned it
# from `resource`, reading every row of the type and probing search_token for each (11 ms at
# 3,000 Patients, growing). Each of these two has one plan whatever the statistics: the lookup
# index, then the primary key.
_IDS_BY_IDENTIFIER = _TOKEN_IDS.where(_TOK.c.system == bindparam("s"))
_BY_IDS = select(_RES).where(
    _RES.c.resource_type == bindparam("t"),
    _RES.c.id.in_(bindparam("ids", expanding=True)),
    _RES.c.deleted.is_(False),
)


def buffer_of(work: Work) -> ResourceBuffer:
    buffer = work.buffers.get(BUFFER_KEY)
    if buffer is None:
        buffer = work.buffers[BUFFER_KEY] = ResourceBuffer()
    assert isinstance(buffer, ResourceBuffer)
    return buffer


class ResourceRepository:
    """Reads take a Session (``from_session``); inside a job use ``for_work`` so reads also see the
    job's pending writes. Writes take the Work (they audit and buffer)."""

    def __init__(self, session: Session, work: Work | None = None) -> None:
        self.session = session
        self.work = work

    @classmethod
    def from_session(cls, session: Session) -> ResourceRepository:
        return cls(session)

    @classmethod
    def for_work(cls, work: Work) -> ResourceRepository:
        return cls(work.session, work)

    def _pending(self) -> ResourceBuffer | None:
        if self.work is None:
            return None
        buffer = self.work.buffers.get(BUFFER_KEY)
        return buffer if isinstance(buffer, ResourceBuffer) else None

    # ------------------------------------------------------------------ writes
    def create(
        self,
        work: Work,
        resource: dict[str, Any],
        *,
        id: str | None = None,
        reason: str = "",
        shape_validated: bool = False,
    ) -> Stored:
        """Create version 1. ``id`` is a hub-assigned, fresh id; an id inside ``resource`` (a client's
        choice) is checked for existence first. Either way the primary key is the last word.

        ``shape_validated``: this exact content was already validated in the same command, or it
        was built from a template validated with fhir.resources (``hub.orders.fhir.
        validated_task_shapes``: only ids, references and instants differ). Never set it for
        partner input that has not been through ``validate``."""
        rtype = resource["resourceType"] if shape_validated else validate(resource)
        rid = id or resource.get("id")
        if rid is None:
            rid = new_id()
        elif id is None and self._exists(work, rtype, rid):
            raise Conflict(f"{rtype}/{rid} already exists")
        return self._write(work, rtype, rid, resource, version=1, method="create", reason=reason)

    def update(
        self,
        work: Work,
        resource: dict[str, Any],
        *,
        if_match: int | None = None,
        reason: str = "",
    ) -> Stored:
        rtype = validate(resource)
        rid = resource.get("id")
        if not isinstance(rid, str):
            raise NotFound(f"{rtype} has no id to update")
        current = self._current_for_update(work, rtype, rid)
        if current is None or current.deleted:
            raise NotFound(f"{rtype}/{rid} does not exist")
        if if_match is not None and if_match != current.version_id:
            raise Conflict(f"{rtype}/{rid} is at version {current.version_id}, not {if_match}")
        return self._write(
            work,
            rtype,
            rid,
            resource,
            version=current.version_id + 1,
            method="update",
            reason=reason,
            previous=current,
        )

    def delete(self, work: Work, rtype: str, rid: str, *, reason: str = "") -> Stored:
        current = self._current_for_update(work, rtype, rid)
        if current is None or current.deleted:
            raise NotFound(f"{rtype}/{rid} does not exist")
        version = current.version_id + 1
        content = {
            "resourceType": rtype,
            "id": rid,
            "meta": {"versionId": str(version), "lastUpdated": work.now_iso},
        }
        text = canonical.dumps(content)
        stored = Stored(rtype, rid, version, work.now, content, canonical.sha256_hex(text), True, text)
        digest = stored.content_hash
        self._buffer(work, stored, "delete", new=False)
        work.audit(
            "delete",
            rtype,
            rid,
            reason=reason,
            old={"version": current.version_id, "hash": current.content_hash},
            new={"version": version, "hash": digest, "deleted": True},
        )
        return stored

    def _write(
        self,
        work: Work,
        rtype: str,
        rid: str,
        resource: dict[str, Any],
        *,
        version: int,
        method: str,
        reason: str,
        previous: Stored | None = None,
    ) -> Stored:
        content = dict(resource)
        content["id"] = rid
        meta = dict(content.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = work.now_iso
        content["meta"] = meta
        text = canonical.dumps(content)
        digest = canonical.sha256_hex(text)
        stored = Stored(rtype, rid, version, work.now, content, digest, False, text)
        self._buffer(work, stored, method, new=previous is None)
        work.audit(
            method,
            rtype,
            rid,
            reason=reason,
            old=None if previous is None else {"version": previous.version_id, "hash": previous.content_hash},
            new={"version": version, "hash": digest},
        )
        return stored

    def _buffer(self, work: Work, stored: Stored, method: str, *, new: bool) -> None:
        buffer = buffer_of(work)
        key = (stored.resource_type, stored.id)
        buffer.current[key] = stored
        if new:
            buffer.new_keys.add(key)
        elif key not in buffer.new_keys:
            buffer.updated_keys.add(key)
        buffer.versions.append(
            {
                "resource_type": stored.resource_type,
                "id": stored.id,
                "version_id": stored.version_id,
                "last_updated": stored.last_updated,
                "method": method,
                "deleted": stored.deleted,
                "content": stored.text,
                "content_hash": stored.content_hash,
            }
        )

    def _exists(self, work: Work, rtype: str, rid: str) -> bool:
        if (rtype, rid) in buffer_of(work).current:
            return True
        return (
            self.session.execute(
                select(Resource.version_id).where(Resource.resource_type == rtype, Resource.id == rid)
            ).first()
            is not None
        )

    def _current_for_update(self, work: Work, rtype: str, rid: str) -> Stored | None:
        pending = buffer_of(work).current.get((rtype, rid))
        if pending is not None:
            return pending
        row = self.session.execute(
            select(Resource).where(Resource.resource_type == rtype, Resource.id == rid).with_for_update()
        ).scalar_one_or_none()
        return None if row is None else _row_to_stored(row)

    # ------------------------------------------------------------------ reads
    def read(self, rtype: str, rid: str) -> Stored:
        pending = self._pending()
        if pending is not None and (rtype, rid) in pending.current:
            stored = pending.current[(rtype, rid)]
            if stored.deleted:
                raise NotFound(f"{rtype}/{rid} is not known")
            return stored
        row = self.session.connection().execute(_READ, {"t": rtype, "i": rid}).one_or_none()
        if row is None or row.deleted:
            raise NotFound(f"{rtype}/{rid} is not known")
        return _row_to_stored(row)

    def vread(self, rtype: str, rid: str, version: int) -> Stored:
        row = self.session.execute(
            select(ResourceVersion).where(
                ResourceVersion.resource_type == rtype,
                ResourceVersion.id == rid,
                ResourceVersion.version_id == version,
            )
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"{rtype}/{rid}/_history/{version} is not known")
        return _row_to_stored(row)

    def history(self, rtype: str, rid: str) -> list[Stored]:
        rows = self.session.execute(
            select(ResourceVersion)
            .where(ResourceVersion.resource_type == rtype, ResourceVersion.id == rid)
            .order_by(ResourceVersion.version_id.desc())
        ).scalars()
        return [_row_to_stored(r) for r in rows]

    def existing_ids(self, rtype: str, ids: list[str]) -> set[str]:
        """Which of these ids exist (pending in this job or stored, not deleted)."""
        pending = self._pending()
        found = {i for i in ids if pending is not None and (rtype, i) in pending.current}
        rest = [i for i in ids if i not in found]
        if rest:
            found |= set(self.session.connection().execute(_EXISTING, {"t": rtype, "ids": rest}).scalars())
        return found

    def find_by_identifier(self, rtype: str, system: str | None, value: str) -> list[Stored]:
        pending = self._pending()
        if pending is not None:
            found = pending.pending_identifier(rtype, system, value)
            if found:
                return found
        conn = self.session.connection()
        if system is None:
            owners = conn.execute(_TOKEN_IDS, {"t": rtype, "v": value}).scalars()
        else:
            owners = conn.execute(_IDS_BY_IDENTIFIER, {"t": rtype, "s": system, "v": value}).scalars()
        ids = sorted({str(i) for i in owners})
        if not ids:
            return []
        return [_row_to_stored(r) for r in conn.execute(_BY_IDS, {"t": rtype, "ids": ids})]

    def referencing(self, rtype: str, param: str, target: str) -> list[Stored]:
        """Resources whose search parameter ``param`` points at ``target``."""
        elements = indexing.REFERENCE_PARAMS.get(rtype, {}).get(param, ())
        rows = self.session.execute(
            select(Resource)
            .join(
                SearchReference,
                and_(SearchReference.resource_type == Resource.resource_type, SearchReference.id == Resource.id),
            )
            .where(
                SearchReference.resource_type == rtype,
                SearchReference.param.in_(elements),
                SearchReference.target == target,
                Resource.deleted.is_(False),
            )
            .order_by(Resource.last_updated, Resource.id)
        ).scalars()
        return [_row_to_stored(r) for r in rows]


@dataclass(frozen=True)
class SearchParam:
    name: str
    value: str


_DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


def _search_range(raw: str) -> tuple[str, datetime, datetime]:
    prefix = raw[:2] if raw[:2] in _DATE_PREFIXES else "eq"
    value = raw[2:] if raw[:2] in _DATE_PREFIXES else raw
    bounds = indexing.instant_range(value)
    if bounds is None:
        raise ValidationFailed(f"{raw!r} is not a FHIR date", [Issue(f"bad date {raw!r}", "search")])
    return prefix, *bounds


def _date_condition(column: Any, raw: str) -> Any:
    """A date parameter against a stored instant (``_lastUpdated``), by the search value's implicit
    range (its precision): ``eq2026`` is all of 2026, ``le2026-12-03`` includes that whole day."""
    prefix, start, end = _search_range(raw)
    ops = {
        "eq": and_(column >= start, column < end),
        "ne": or_(column < start, column >= end),
        "gt": column >= end,
        "sa": column >= end,
        "lt": column < start,
        "eb": column < start,
        "ge": column >= start,
        "le": column < end,
    }
    return ops[prefix]


def _range_condition(low: Any, high: Any, raw: str) -> Any:
    """A date parameter against a stored range ``[low, high)`` (a stored ``2026-12`` is the
    month), as R4 search defines the prefixes for ranges: ``eq`` the search range contains the
    stored one; ``gt``/``lt`` the range above/below the search value overlaps it; ``ge``/``le``
    either of those; ``sa``/``eb`` it lies wholly after/before the search range."""
    prefix, start, end = _search_range(raw)
    contained = and_(low >= start, high <= end)
    ops = {
        "eq": contained,
        "ne": or_(low < start, high > end),
        "gt": high > end,
        "lt": low < start,
        "ge": or_(high > end, contained),
        "le": or_(low < start, contained),
        "sa": low >= end,
        "eb": high <= start,
    }
    return ops[prefix]


def _or_values(value: str) -> list[str]:
    """A parameter's comma-separated alternatives (FHIR search: ``a,b`` is a OR b; ``\\,`` is a
    literal comma)."""
    parts = re.split(r"(?<!\\),", value)
    return [part.replace("\\,", ",") for part in parts]


def _token_condition(rtype: str, name: str, value: str) -> Any:
    """``code`` any system; ``system|code`` both; ``|code`` only without a system; ``system|``
    any code of that system."""
    system, sep, code = value.partition("|")
    sub = select(SearchToken.id).where(SearchToken.resource_type == rtype, SearchToken.param == name)
    if not sep:
        return Resource.id.in_(sub.where(SearchToken.value == value))
    if code:
        sub = sub.where(SearchToken.value == code)
    if system:
        sub = sub.where(SearchToken.system == system)
    else:
        sub = sub.where(or_(SearchToken.system.is_(None), SearchToken.system == ""))
    return Resource.id.in_(sub)


def is_supported(rtype: str, name: str) -> bool:
    """Does ``search_conditions`` serve the search parameter ``name`` for ``rtype``?"""
    return (
        name in ("_id", "_lastUpdated")
        or name in indexing.TOKEN_PARAMS
        or name in indexing.REFERENCE_PARAMS.get(rtype, {})
        or name in indexing.DATE_PARAMS.get(rtype, {})
    )


def search_conditions(rtype: str, params: list[SearchParam]) -> list[Any]:
    """SQL conditions (AND) over ``resource`` for the supported search parameters."""
    conds: list[Any] = []
    ref_params = indexing.REFERENCE_PARAMS.get(rtype, {})
    date_params = indexing.DATE_PARAMS.get(rtype, {})
    for p in params:
        if p.name == "_id":
            conds.append(Resource.id.in_(p.value.split(",")))
        elif p.name == "_lastUpdated":
            conds.append(_date_condition(Resource.last_updated, p.value))
        elif p.name in indexing.TOKEN_PARAMS:
            conds.append(or_(*(_token_condition(rtype, p.name, v) for v in _or_values(p.value))))
        elif p.name in ref_params:
            targets = _or_values(p.value)
            if p.name in ("patient", "subject"):
                targets = [t if "/" in t else f"Patient/{t}" for t in targets]
            sub = select(SearchReference.id).where(
                SearchReference.resource_type == rtype,
                SearchReference.param.in_(ref_params[p.name]),
                SearchReference.target.in_(targets),
            )
            conds.append(Resource.id.in_(sub))
        elif p.name in date_params:
            sub = select(SearchDate.id).where(
                SearchDate.resource_type == rtype,
                SearchDate.param == p.name,
                _range_condition(SearchDate.value, SearchDate.value_end, p.value),
            )
            conds.append(Resource.id.in_(sub))
        else:
            raise ValidationFailed(
                f"search parameter {p.name!r} is not supported for {rtype}",
                [Issue(f"unsupported search parameter {p.name}", p.name)],
            )
    return conds


def search(
    session: Session, rtype: str, params: list[SearchParam], *, count: int = 50, offset: int = 0
) -> list[Stored]:
    stmt = (
        select(Resource)
        .where(Resource.resource_type == rtype, Resource.deleted.is_(False), *search_conditions(rtype, params))
        .order_by(Resource.last_updated, Resource.id)
        .limit(count)
        .offset(offset)
    )
    return [_row_to_stored(r) for r in session.execute(stmt).scalars()]
