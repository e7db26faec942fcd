"""FHIR R4 REST under ``/fhir``: read, vread, instance and type history, search, create (plain and
conditional), update (If-Match), transaction and batch Bundles, ``$validate`` and the
CapabilityStatement.

Routes are thin: reads go to ``hub.api.fhir_search`` in a read session (on PostgreSQL under the
partner role, so row-level security applies); writes go through the inbox
(``hub.api.idempotency``) into ``hub.api.fhir_service`` as one unit of work, and answer only after
COMMIT. Callers authenticate with a SMART Backend Services access token (``hub.api.auth``) or, for
hub operators, the operator token. JSON only: XML bodies are refused with 415, XML-only Accept with
406.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from email.utils import format_datetime, parsedate_to_datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Path, Request, Response
from sqlalchemy.orm import Session

from hub import canonical
from hub.api import conformance, fhir_search
from hub.api.auth import Principal, TokenService
from hub.api.capability import capability_statement
from hub.api.deps import CtxDep
from hub.api.fhir_service import BadRequest, FhirService, Result, precheck
from hub.api.idempotency import InFlight, Reply, external_id, inbound_job, raw_request
from hub.api.isolation import enter_partner_scope, references
from hub.api.outcomes import FHIR_JSON_UTF8, operation_outcome
from hub.api.smart import token_url
from hub.api.validate_operation import for_update, outcome, validation_input
from hub.errors import HubError, Issue, NotFound
from hub.fhirstore.repository import Stored
from hub.fhirstore.validation import SUPPORTED_TYPES

FHIR_JSON = "application/fhir+json"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
XML_TYPES = ("application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir", "xml")
FORM = "application/x-www-form-urlencoded"
router = APIRouter(prefix="/fhir")


class UnsupportedMediaType(HubError):
    def __init__(self, message: str, status: int = 415) -> None:
        super().__init__(
            message,
            [Issue(message, "Content-Type" if status == 415 else "Accept")],
            status=status,
            fhir_code="not-supported",
        )


def fhir_format(request: Request) -> None:
    fmt = request.query_params.get("_format")
    if fmt is not None and fmt.lower() not in (*JSON_TYPES, "json"):
        if fmt.lower() in XML_TYPES:
            raise UnsupportedMediaType("XML is not supported by this server; use _format=json", 406)
        raise UnsupportedMediaType(f"_format {fmt!r} is not supported; use json", 406)
    accept = "" if fmt is not None else request.headers.get("accept", "")  # _format overrides Accept
    if accept:
        kinds = [a.split(";")[0].strip().lower() for a in accept.split(",")]
        if kinds and all(k in XML_TYPES for k in kinds):
            raise UnsupportedMediaType("XML is not supported by this server; accept application/fhir+json", 406)
    if request.method in ("POST", "PUT"):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.url.path.endswith("/_search"):
            if ctype and ctype != FORM:
                raise UnsupportedMediaType(f"POST _search takes its parameters as {FORM}, not {ctype}")
            return
        if ctype in XML_TYPES:
            raise UnsupportedMediaType("XML is not supported by this server; send application/fhir+json")
        if ctype and ctype not in JSON_TYPES:
            raise UnsupportedMediaType(f"Content-Type {ctype} is not supported; send application/fhir+json")


FormatDep = Annotated[None, Depends(fhir_format)]


def current_principal(request: Request) -> Principal:
    tokens: TokenService = request.app.state.tokens
    return tokens.principal(request.headers.get("authorization", ""))


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def scoped_session(ctx: CtxDep, principal: PrincipalDep) -> Iterator[Session]:
    with ctx.store.reading() as session:
        enter_partner_scope(session, principal)
        yield session


ScopedSession = Annotated[Session, Depends(scoped_session)]


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def fhir_response(body: dict[str, Any] | None, status: int = 200, stored: Stored | None = None) -> Response:
    headers = {}
    if stored is not None:
        headers["ETag"] = stored.etag
        headers["Last-Modified"] = format_datetime(stored.last_updated, usegmt=True)
    content = b"" if body is None else canonical.dumpb(body)
    return Response(content, status_code=status, media_type=FHIR_JSON_UTF8, headers=headers)


def _type(resource_type: str) -> str:
    return fhir_search.served_type(resource_type)


TypeParam = Annotated[str, Path(json_schema_extra={"enum": list(SUPPORTED_TYPES)})]
IdParam = Annotated[str, Path(json_schema_extra={"pattern": r"^[A-Za-z0-9\-.]{1,64}$"})]
SEARCH_PARAMS = {
    "parameters": [
        {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
        for name, kind in (
            ("_id", "string"),
            ("identifier", "string"),
            ("status", "string"),
            ("patient", "string"),
            ("subject", "string"),
            ("_lastUpdated", "string"),
            ("authored", "string"),
            ("_count", "integer"),
            ("_offset", "integer"),
            ("_include", "string"),
        )
    ]
}
JSON_BODY = {
    "requestBody": {
        "required": True,
        "content": {FHIR_JSON: {"schema": {"type": "object", "properties": {"resourceType": {"type": "string"}}}}},
    }
}


# --------------------------------------------------------------------------- capability
@router.get("/metadata")
def metadata(request: Request, _: FormatDep) -> Response:
    return fhir_response(capability_statement(base_url(request), token_url(request)))


# --------------------------------------------------------------------------- writes
def _prefer(request: Request) -> str:
    for part in request.headers.get("prefer", "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "return":
            value = value.strip().strip('"')
            if value in ("minimal", "representation", "OperationOutcome"):
                return value
    return "representation"


def _lenient(request: Request) -> bool:
    """``Prefer: handling=lenient``: unknown search parameters are ignored (the default, and
    ``handling=strict``, refuse them)."""
    for part in request.headers.get("prefer", "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "handling":
            return value.strip().strip('"').lower() == "lenient"
    return False


def _parse(body: bytes) -> dict[str, Any]:
    try:
        value = canonical.loads(body)
    except ValueError:
        raise BadRequest("the body is not valid JSON", [Issue("invalid JSON", "body")]) from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a FHIR resource (a JSON object)", [Issue("not an object", "body")])
    if _deeper_than(value, MAX_DEPTH):
        raise BadRequest(
            f"the body is nested deeper than {MAX_DEPTH} levels; no FHIR resource needs that",
            [Issue("nesting too deep", "body")],
        )
    return value


# FHIR resources nest a few dozen levels at most (a transaction Bundle of resources with
# contained resources and extensions). The checks that walk a body recurse, so a body nested
# hundreds deep would end in RecursionError (a 500) instead of an answer.
MAX_DEPTH = 100


def _deeper_than(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return False


def _precheck(rtype: str, body: bytes, principal: Principal) -> tuple[dict[str, Any], list[Issue] | None] | None:
    try:
        doc = _parse(body)
    except HubError:
        return None  # the job parses again and records the refusal in the inbox
    return doc, precheck(rtype, doc, principal)


def reply_for(result: Result, prefer: str, base: str) -> Reply:
    stored = result.stored
    headers = {"Content-Type": FHIR_JSON_UTF8}
    if stored is None:
        return Reply(result.status, headers, canonical.dumpb(result.body or {}), result.order_id)
    headers["ETag"] = stored.etag
    headers["Last-Modified"] = format_datetime(stored.last_updated, usegmt=True)
    headers["Location"] = f"{base}/{stored.resource_type}/{stored.id}/_history/{stored.version_id}"
    if result.coi:
        headers["X-CoI"] = result.coi  # the assigned chain-of-identity identifier (eye-readable)
    body: bytes | None
    if prefer == "minimal":
        body = None
    elif prefer == "OperationOutcome":
        text = f"{stored.resource_type}/{stored.id} version {stored.version_id} stored"
        if result.coi:
            text += f"; chain-of-identity identifier {result.coi}"
        body = canonical.dumpb(operation_outcome([Issue(text, severity="information")], "informational"))
    else:
        body = stored.text.encode()
    return Reply(result.status, headers, body, result.order_id)


Needs = Callable[[bytes], list[tuple[str, str]]]


async def _write(
    request: Request,
    ctx: Any,
    principal: Principal,
    message_type: str,
    handle: Callable[[FhirService, bytes], Reply],
    needs: Needs,
) -> Response:
    """``needs``: the (type, letter) scopes the request needs, checked again before a stored answer
    is replayed for an Idempotency-Key (the key must not stand in for the scope)."""
    body = await request.body()
    key = request.headers.get("idempotency-key")
    external = external_id(key)
    partner = principal.partner_id or "hub-operator"
    raw = raw_request(request.method, request.url.path, request.headers.get("content-type", ""), body)
    inflight: InFlight = request.app.state.inflight

    def handler(work: Any) -> Reply:
        return handle(FhirService(work, principal, ctx.partners, ctx.settings.coi_fin), body)

    def authorize() -> None:
        for rtype, letter in needs(body):
            principal.require(rtype, letter)

    job = inbound_job(
        partner=partner, external=external, raw=raw, message_type=message_type, handle=handler, authorize=authorize
    )
    with inflight.claim(partner, key):
        reply = await ctx.store.run_async(job, actor=principal.actor)
    return Response(reply.body or b"", status_code=reply.status, headers=reply.headers, media_type=None)


def bundle_needs(body: bytes) -> list[tuple[str, str]]:
    """The scopes a transaction or batch Bundle's entries need, as their processing checks them:
    the method's letter, and ``s`` for a conditional create, a search and a conditional reference.
    A body that cannot be read needs nothing: its stored answer is the refusal."""
    try:
        entries = _parse(body).get("entry")
    except HubError:
        return []
    needs: list[tuple[str, str]] = []
    for entry in entries if isinstance(entries, list) else []:
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict):
            continue
        method, url = str(request.get("method") or "").upper(), str(request.get("url") or "")
        path, _, query = url.partition("?")
        parts = path.strip("/").split("/")
        if method == "GET":
            needs.append((parts[0], "r" if len(parts) > 1 and not query else "s"))
        elif method in ("POST", "PUT", "DELETE"):
            needs.append((parts[0], {"POST": "c", "PUT": "u", "DELETE": "d"}[method]))
            if request.get("ifNoneExist") or query:
                needs.append((parts[0], "s"))
        for ref in references(entry.get("resource")):
            if "?" in ref:
                needs.append((ref.split("?", 1)[0], "s"))
    return [(rtype, letter) for rtype, letter in needs if rtype in SUPPORTED_TYPES]


def _bundle_reader(svc: FhirService, base: str) -> Callable[[str], dict[str, Any]]:
    def read(url: str) -> dict[str, Any]:
        path, _, query = url.partition("?")
        parts = path.strip("/").split("/")
        rtype = fhir_search.served_type(parts[0])
        session = svc.work.session
        if len(parts) == 2 and not query:
            return fhir_search.read(session, svc.principal, rtype, parts[1]).content
        if len(parts) == 1:
            page = fhir_search.search(session, svc.principal, rtype, parse_qsl(query, keep_blank_values=True))
            return fhir_search.search_bundle(page, rtype, base)
        raise BadRequest(f"GET {url} is not supported inside a Bundle")

    return read


@router.post("", openapi_extra=JSON_BODY)
async def bundle(request: Request, ctx: CtxDep, principal: PrincipalDep, _: FormatDep) -> Response:
    """Transaction (atomic) or batch Bundle."""
    prefer = _prefer(request)
    base = base_url(request)

    def handle(svc: FhirService, body: bytes) -> Reply:
        doc = _parse(body)
        if doc.get("resourceType") != "Bundle":
            raise BadRequest("POST to the base takes a transaction or batch Bundle")
        kind = doc.get("type")
        if kind == "transaction":
            result = svc.transaction(doc, _bundle_reader(svc, base), prefer)
        elif kind == "batch":
            result = svc.batch(doc, _bundle_reader(svc, base), prefer)
        else:
            raise BadRequest(f"Bundle.type {kind!r}: only transaction and batch are processed here")
        for entry in result.get("entry", []):  # Bundle.entry.fullUrl is an absolute URL
            if "fullUrl" in entry and "://" not in entry["fullUrl"]:
                entry["fullUrl"] = f"{base}/{entry['fullUrl']}"
        return Reply(200, {"Content-Type": FHIR_JSON_UTF8}, canonical.dumpb(result))

    return await _write(request, ctx, principal, "Bundle.transaction", handle, bundle_needs)


@router.post("/{resource_type}/$validate", openapi_extra=JSON_BODY)
async def validate_operation(
    resource_type: TypeParam, request: Request, principal: PrincipalDep, _: FormatDep
) -> Response:
    """Would the hub accept this resource as a create? (200 with the issues, valid or not)"""
    rtype = _type(resource_type)
    given = validation_input(rtype, _parse(await request.body()), request.query_params.getlist("profile"))
    if given.mode in ("update", "delete"):
        raise BadRequest(
            f"mode {given.mode} validates against an existing resource: POST {rtype}/<id>/$validate",
            [Issue(f"mode {given.mode} needs the resource's id in the URL", "Parameters.parameter")],
        )
    if rtype == "ServiceRequest" and not principal.is_operator:
        given.profiles.append(conformance.THERAPY_ORDER)
    return fhir_response(outcome(conformance.issues_for(given.resource, given.profiles)))


async def _body(request: Request) -> bytes:
    return await request.body()


@router.post("/{resource_type}/{rid}/$validate", openapi_extra=JSON_BODY)
def validate_instance(
    resource_type: TypeParam,
    rid: IdParam,
    request: Request,
    body: Annotated[bytes, Depends(_body)],
    session: ScopedSession,
    principal: PrincipalDep,
    _: FormatDep,
) -> Response:
    """Would the hub accept this resource as an update of <Type>/<id>? (mode delete: this hub
    deletes nothing)"""
    rtype = _type(resource_type)
    fhir_search.read(session, principal, rtype, rid)  # 404 for what the caller cannot see
    given = validation_input(rtype, _parse(body), request.query_params.getlist("profile"))
    if given.mode == "delete":
        refusal = Issue("this server does not delete resources", rtype)
        return fhir_response(outcome([refusal]))
    return fhir_response(outcome(for_update(rtype, rid, given)))


@router.get("/{resource_type}/{rid}/$validate")
def validate_stored(
    resource_type: TypeParam,
    rid: IdParam,
    request: Request,
    session: ScopedSession,
    principal: PrincipalDep,
    _: FormatDep,
) -> Response:
    """The stored resource, checked against its claimed profiles and any ``profile`` asked for."""
    stored = fhir_search.read(session, principal, _type(resource_type), rid)
    profiles = request.query_params.getlist("profile")
    return fhir_response(outcome(conformance.issues_for(stored.content, profiles)))


@router.post("/{resource_type}", openapi_extra=JSON_BODY)
async def create(
    resource_type: TypeParam, request: Request, ctx: CtxDep, principal: PrincipalDep, _: FormatDep
) -> Response:
    rtype = _type(resource_type)
    prefer = _prefer(request)
    base = base_url(request)
    if_none_exist = request.headers.get("if-none-exist")
    # Parse and validate outside the unit of work (pure CPU), so the committer thread only writes.
    checked = await asyncio.to_thread(_precheck, rtype, await request.body(), principal)

    def handle(svc: FhirService, body: bytes) -> Reply:
        doc, issues = checked if checked is not None else (_parse(body), None)
        result = svc.create(rtype, doc, if_none_exist, prechecked=issues)
        return reply_for(result, prefer, base)

    needs = [(rtype, "c"), (rtype, "s")] if if_none_exist else [(rtype, "c")]
    return await _write(request, ctx, principal, f"{rtype}.create", handle, lambda _: needs)


@router.put("/{resource_type}/{rid}", openapi_extra=JSON_BODY)
async def update(
    resource_type: TypeParam, rid: IdParam, request: Request, ctx: CtxDep, principal: PrincipalDep, _: FormatDep
) -> Response:
    rtype = _type(resource_type)
    prefer = _prefer(request)
    base = base_url(request)
    if_match = request.headers.get("if-match")

    def handle(svc: FhirService, body: bytes) -> Reply:
        from hub.api.fhir_service import _if_match

        result = svc.update(rtype, rid, _parse(body), _if_match(if_match))
        return reply_for(result, prefer, base)

    return await _write(request, ctx, principal, f"{rtype}.update", handle, lambda _: [(rtype, "u")])


# --------------------------------------------------------------------------- reads
HISTORY_PARAMS = {
    "parameters": [
        {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
        for name, kind in (("_count", "integer"), ("_offset", "integer"), ("_since", "string"), ("_at", "string"))
    ]
}


@router.get("/{resource_type}/_history", openapi_extra=HISTORY_PARAMS)
def type_history(
    resource_type: TypeParam, request: Request, session: ScopedSession, principal: PrincipalDep, _: FormatDep
) -> Response:
    rtype = _type(resource_type)
    query = list(request.query_params.multi_items())
    page = fhir_search.type_history(session, principal, rtype, query, lenient=_lenient(request))
    next_url = fhir_search.history_next_url(page, f"{base_url(request)}/{rtype}/_history")
    return fhir_response(
        fhir_search.history_bundle(page.versions, base_url(request), next_url, first_page=page.offset == 0)
    )


def _not_modified(request: Request, stored: Stored) -> bool:
    """Conditional read: ``If-None-Match`` names the current version, or (without it)
    ``If-Modified-Since`` is not before the last change (HTTP dates have whole seconds)."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
        return "*" in tags or stored.etag.removeprefix("W/") in tags
    since = request.headers.get("if-modified-since")
    if since is None:
        return False
    try:
        when = parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False  # an unreadable date is ignored (RFC 9110 13.1.3)
    if when.tzinfo is None:
        return False
    return stored.last_updated.replace(microsecond=0) <= when


@router.get("/{resource_type}/{rid}")
def read(
    resource_type: TypeParam,
    rid: IdParam,
    request: Request,
    session: ScopedSession,
    principal: PrincipalDep,
    _: FormatDep,
) -> Response:
    stored = fhir_search.read(session, principal, _type(resource_type), rid)
    if _not_modified(request, stored):
        return Response(
            status_code=304,
            headers={
                "ETag": stored.etag,
                "Last-Modified": format_datetime(stored.last_updated, usegmt=True),
            },
        )
    return fhir_response(stored.content, stored=stored)


@router.get("/{resource_type}/{rid}/_history/{vid}")
def vread(
    resource_type: TypeParam, rid: IdParam, vid: int, session: ScopedSession, principal: PrincipalDep, _: FormatDep
) -> Response:
    stored = fhir_search.vread(session, principal, _type(resource_type), rid, vid)
    return fhir_response(stored.content, stored=stored)


@router.get("/{resource_type}/{rid}/_history", openapi_extra=HISTORY_PARAMS)
def history(
    resource_type: TypeParam,
    rid: IdParam,
    request: Request,
    session: ScopedSession,
    principal: PrincipalDep,
    _: FormatDep,
) -> Response:
    rtype = _type(resource_type)
    query = list(request.query_params.multi_items())
    page = fhir_search.instance_history(session, principal, rtype, rid, query, lenient=_lenient(request))
    next_url = fhir_search.history_next_url(page, f"{base_url(request)}/{rtype}/{rid}/_history")
    return fhir_response(
        fhir_search.history_bundle(page.versions, base_url(request), next_url, first_page=page.offset == 0)
    )


@router.get("/{resource_type}", openapi_extra=SEARCH_PARAMS)
def search_type(
    resource_type: TypeParam, request: Request, session: ScopedSession, principal: PrincipalDep, _: FormatDep
) -> Response:
    rtype = _type(resource_type)
    query = list(request.query_params.multi_items())
    page = fhir_search.search(session, principal, rtype, query, lenient=_lenient(request))
    return fhir_response(fhir_search.search_bundle(page, rtype, base_url(request)))


async def form_params(request: Request) -> list[tuple[str, str]]:
    """The parameters of ``POST [type]/_search``: the form body's, then the URL's."""
    body = await request.body()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the form body is not UTF-8", [Issue("not UTF-8", "body")]) from None
    return [*parse_qsl(text, keep_blank_values=True), *request.query_params.multi_items()]


FormParams = Annotated[list[tuple[str, str]], Depends(form_params)]


@router.post(
    "/{resource_type}/_search",
    openapi_extra={"requestBody": {"content": {FORM: {"schema": {"type": "object"}}}}},
)
def search_post(
    resource_type: TypeParam,
    request: Request,
    _: FormatDep,
    form: FormParams,
    session: ScopedSession,
    principal: PrincipalDep,
) -> Response:
    """Search with the parameters in the body (FHIR search by POST), so identifiers such as MRNs
    stay out of URLs and access logs."""
    rtype = _type(resource_type)
    page = fhir_search.search(session, principal, rtype, form, lenient=_lenient(request))
    return fhir_response(fhir_search.search_bundle(page, rtype, base_url(request)))


__all__ = ["FHIR_JSON", "NotFound", "router"]
