"""Read side of the FHIR API: read, vread, instance and type history, search with paging and
``_include`` — every query carrying the caller's isolation predicate (``hub.api.isolation``).

Queries compose the store's own search conditions (``hub.fhirstore.repository.search_conditions``)
with the visibility rule; rows come from the one resource store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased

from hub.api.auth import Principal
from hub.api.isolation import require_visible, visible_condition, visible_ids
from hub.db.models import Resource, ResourceVersion
from hub.errors import Issue, NotFound, ValidationFailed
from hub.fhirstore import indexing
from hub.fhirstore.repository import (
    ResourceRepository,
    SearchParam,
    Stored,
    _row_to_stored,
    is_supported,
    search_conditions,
)
from hub.fhirstore.validation import SUPPORTED_TYPES

DEFAULT_COUNT = 50
MAX_COUNT = 1000
# Parameters that shape the result rather than select resources.
RESULT_PARAMS = ("_count", "_offset", "_include", "_format", "_total")


_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def served_id(rtype: str, rid: str) -> str:
    """A FHIR id (``[A-Za-z0-9-.]{1,64}``); anything else cannot exist here: 404."""
    if not _ID.match(rid):
        raise NotFound(f"{rtype}/{rid!r} is not known")
    return rid


def clean_params(query: list[tuple[str, str]]) -> list[tuple[str, str]]:
    for name, value in query:
        if _CONTROL.search(name) or _CONTROL.search(value):
            raise ValidationFailed(
                "control characters are not allowed in search parameters",
                [Issue("control character in a search parameter", _CONTROL.sub("?", name))],
            )
    return query


def served_type(resource_type: str) -> str:
    if resource_type not in SUPPORTED_TYPES:
        raise NotFound(f"resource type {resource_type} is not served here")
    return resource_type


def read(session: Session, principal: Principal, rtype: str, rid: str) -> Stored:
    principal.require(rtype, "r")
    served_id(rtype, rid)
    require_visible(session, principal, rtype, rid)
    return ResourceRepository.from_session(session).read(rtype, rid)


def vread(session: Session, principal: Principal, rtype: str, rid: str, vid: int) -> Stored:
    principal.require(rtype, "r")
    served_id(rtype, rid)
    _require_visible_any(session, principal, rtype, rid)
    if not 1 <= vid < 2**31:
        raise NotFound(f"{rtype}/{rid}/_history/{vid} is not known")
    stored = ResourceRepository.from_session(session).vread(rtype, rid, vid)
    if stored.deleted:
        raise NotFound(f"{rtype}/{rid} version {vid} is a deletion")
    return stored


def _require_visible_any(session: Session, principal: Principal, rtype: str, rid: str) -> None:
    """Visibility is decided on the resource's current version (deleted ones included)."""
    if principal.is_operator:
        return
    row = session.execute(
        select(Resource.id).where(
            Resource.resource_type == rtype, Resource.id == rid, visible_condition(principal, rtype)
        )
    ).first()
    if row is None:
        raise NotFound(f"{rtype}/{rid} is not known")


def instance_history(
    session: Session, principal: Principal, rtype: str, rid: str, query: list[tuple[str, str]], *, lenient: bool = False
) -> HistoryPage:
    """One resource's versions, newest first, with ``_count``/``_offset`` paging and ``_since``/``_at``."""
    principal.require(rtype, "r")
    served_id(rtype, rid)
    _require_visible_any(session, principal, rtype, rid)
    page = _history(session, principal, rtype, rid, query, lenient=lenient)
    if not page.versions:  # an empty page of a resource that exists is an empty Bundle, not a 404
        exists = select(Resource.id).where(Resource.resource_type == rtype, Resource.id == rid)
        if session.execute(exists).first() is None:
            raise NotFound(f"{rtype}/{rid} is not known")
    return page


def _int_param(name: str, value: str, low: int, high: int) -> int:
    try:
        return max(low, min(high, int(value)))
    except ValueError:
        raise ValidationFailed(f"{name} must be an integer", [Issue(f"{name} must be an integer", name)]) from None


@dataclass
class Page:
    entries: list[Stored]
    included: list[Stored]
    offset: int
    count: int
    has_next: bool
    params: list[tuple[str, str]]  # the selecting parameters, for self/next links
    includes: list[str]
    total: int | None = None  # counted when _count=0


def parse_search(query: list[tuple[str, str]]) -> tuple[list[SearchParam], int, int, list[str]]:
    params: list[SearchParam] = []
    count, offset, includes = DEFAULT_COUNT, 0, []
    for name, value in clean_params(query):
        if name == "_count":
            count = _int_param("_count", value, 0, MAX_COUNT)
        elif name == "_offset":
            offset = _int_param("_offset", value, 0, 10**9)
        elif name == "_include":
            includes.append(value)
        elif name in ("_format", "_total"):
            continue
        else:
            params.append(SearchParam(name, value))
    return params, count, offset, includes


def _include_elements(rtype: str, include: str) -> tuple[str, ...]:
    source, _, param = include.partition(":")
    param, _, _target = param.partition(":")
    elements = indexing.REFERENCE_PARAMS.get(source, {}).get(param)
    if source != rtype or not elements:
        raise ValidationFailed(
            f"_include={include} is not supported",
            [
                Issue(
                    f"supported: {', '.join(f'{rtype}:{p}' for p in indexing.REFERENCE_PARAMS.get(rtype, {}))}",
                    "_include",
                )
            ],
        )
    return elements


def search(
    session: Session, principal: Principal, rtype: str, query: list[tuple[str, str]], *, lenient: bool = False
) -> Page:
    """``lenient`` (``Prefer: handling=lenient``): parameters this server does not serve are
    ignored instead of refused; the self link shows the ones that were applied."""
    principal.require(rtype, "s")
    params, count, offset, includes = parse_search(query)
    if lenient:
        params = [p for p in params if is_supported(rtype, p.name)]
    include_elements = [(inc, _include_elements(rtype, inc)) for inc in includes]
    stmt = (
        select(Resource)
        .where(
            Resource.resource_type == rtype,
            Resource.deleted.is_(False),
            *search_conditions(rtype, params),
            visible_condition(principal, rtype),
        )
        .order_by(Resource.last_updated, Resource.id)
        .limit(count + 1)
        .offset(offset)
    )
    total = None
    if count == 0:  # _count=0: only how many match (a next link would name this same empty page)
        total = session.execute(select(func.count()).select_from(stmt.limit(None).offset(None).subquery())).scalar()
        stmt = stmt.limit(0)
    rows = [_row_to_stored(r) for r in session.execute(stmt).scalars()]
    has_next = count > 0 and len(rows) > count
    rows = rows[:count]
    included: list[Stored] = []
    if include_elements:
        wanted: dict[str, set[str]] = {}
        for stored in rows:
            for _, elements in include_elements:
                for element in elements:
                    value = stored.content.get(element)
                    for ref in value if isinstance(value, list) else [value]:
                        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                            t, _, i = ref["reference"].partition("/")
                            if t in SUPPORTED_TYPES and i and "/" not in i:
                                wanted.setdefault(t, set()).add(i)
        for t, ids in sorted(wanted.items()):
            if not principal.allows(t, "r"):
                continue
            for rid in sorted(visible_ids(session, principal, t, sorted(ids))):
                try:
                    included.append(ResourceRepository.from_session(session).read(t, rid))
                except NotFound:
                    continue
    selecting = [(p.name, p.value) for p in params]
    return Page(rows, included, offset, count, has_next, selecting, includes, total)


def search_bundle(page: Page, rtype: str, base: str) -> dict[str, Any]:
    def link(offset: int) -> str:
        q = [*page.params, *(("_include", i) for i in page.includes), ("_count", str(page.count))]
        q.append(("_offset", str(offset)))
        return f"{base}/{rtype}?{urlencode(q)}"

    links = [{"relation": "self", "url": link(page.offset)}]
    if page.has_next:
        links.append({"relation": "next", "url": link(page.offset + page.count)})
    if page.offset > 0:
        links.append({"relation": "previous", "url": link(max(0, page.offset - page.count))})
    entries = [
        {"fullUrl": f"{base}/{s.resource_type}/{s.id}", "resource": s.content, "search": {"mode": "match"}}
        for s in page.entries
    ]
    entries += [
        {"fullUrl": f"{base}/{s.resource_type}/{s.id}", "resource": s.content, "search": {"mode": "include"}}
        for s in page.included
    ]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}
    if page.total is not None:
        bundle["total"] = page.total
    elif not page.has_next and page.offset == 0:
        bundle["total"] = len(page.entries)
    return bundle


@dataclass
class HistoryPage:
    versions: list[Stored]
    count: int
    offset: int
    has_next: bool
    params: list[tuple[str, str]]  # the selecting parameters applied (_since, _at), for the next link


def _history_params(
    query: list[tuple[str, str]], lenient: bool
) -> tuple[int, int, datetime | None, tuple[datetime, datetime] | None, list[tuple[str, str]]]:
    """``_count``, ``_offset``, ``_since`` (an instant), ``_at`` (a date, by its precision). Another
    parameter is refused (422), or ignored with ``Prefer: handling=lenient``, as in search."""
    count, offset = DEFAULT_COUNT, 0
    since: datetime | None = None
    at: tuple[datetime, datetime] | None = None
    applied: list[tuple[str, str]] = []
    for name, value in clean_params(query):
        if name == "_count":
            count = _int_param("_count", value, 0, MAX_COUNT)
        elif name == "_offset":
            offset = _int_param("_offset", value, 0, 10**9)
        elif name == "_since":
            since = indexing.parse_instant(value)
            if since is None:
                raise ValidationFailed(
                    f"_since {value!r} is not a FHIR instant", [Issue("_since must be an instant", "_since")]
                )
            applied.append((name, value))
        elif name == "_at":
            at = indexing.instant_range(value)
            if at is None:
                raise ValidationFailed(f"_at {value!r} is not a FHIR date", [Issue("_at must be a date", "_at")])
            applied.append((name, value))
        elif name != "_format" and not lenient:
            raise ValidationFailed(
                f"parameter {name!r} is not supported for history", [Issue(f"unsupported parameter {name}", name)]
            )
    return count, offset, since, at, applied


def _history(
    session: Session,
    principal: Principal,
    rtype: str,
    rid: str | None,
    query: list[tuple[str, str]],
    *,
    lenient: bool,
) -> HistoryPage:
    count, offset, since, at, applied = _history_params(query, lenient)
    stmt = select(ResourceVersion).where(ResourceVersion.resource_type == rtype)
    if rid is not None:
        stmt = stmt.where(ResourceVersion.id == rid)
    if since is not None:
        stmt = stmt.where(ResourceVersion.last_updated >= since)
    if at is not None:
        # current at some point of the period: written before its end, replaced (if ever) after its start
        later = aliased(ResourceVersion)
        replaced = (
            select(func.min(later.last_updated))
            .where(
                later.resource_type == ResourceVersion.resource_type,
                later.id == ResourceVersion.id,
                later.version_id > ResourceVersion.version_id,
            )
            .scalar_subquery()
        )
        stmt = stmt.where(ResourceVersion.last_updated < at[1], or_(replaced.is_(None), replaced > at[0]))
    if not principal.is_operator:
        stmt = stmt.where(visible_condition(principal, rtype, ResourceVersion.resource_type, ResourceVersion.id))
    stmt = stmt.order_by(ResourceVersion.last_updated.desc(), ResourceVersion.id, ResourceVersion.version_id.desc())
    rows = [_row_to_stored(r) for r in session.execute(stmt.limit(count + 1).offset(offset)).scalars()]
    has_next = count > 0 and len(rows) > count  # _count=0: no next (it would name the same page)
    return HistoryPage(rows[:count], count, offset, has_next, applied)


def type_history(
    session: Session, principal: Principal, rtype: str, query: list[tuple[str, str]], *, lenient: bool = False
) -> HistoryPage:
    principal.require(rtype, "s")
    return _history(session, principal, rtype, None, query, lenient=lenient)


def history_next_url(page: HistoryPage, url: str) -> str | None:
    """The next page of a history (``url``: ``[base]/[type]/_history`` or ``…/[id]/_history``)."""
    if not page.has_next:
        return None
    q = [*page.params, ("_count", str(page.count)), ("_offset", str(page.offset + page.count))]
    return f"{url}?{urlencode(q)}"


def history_bundle(
    versions: list[Stored], base: str, next_url: str | None = None, *, first_page: bool = True
) -> dict[str, Any]:
    entries = [
        {
            "fullUrl": f"{base}/{v.resource_type}/{v.id}",
            **({} if v.deleted else {"resource": v.content}),
            "request": {
                "method": "DELETE" if v.deleted else ("POST" if v.version_id == 1 else "PUT"),
                # R4: the url of the request that made this version (a create is POST [type])
                "url": v.resource_type if v.version_id == 1 and not v.deleted else f"{v.resource_type}/{v.id}",
            },
            "response": {"status": "200" if v.version_id > 1 else "201", "etag": v.etag},
        }
        for v in versions
    ]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history", "entry": entries}
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    elif first_page:  # the whole history is on this page
        bundle["total"] = len(entries)
    return bundle
