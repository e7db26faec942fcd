"""FHIR R4 read interactions (read, vread, history, search) and the CapabilityStatement.

Authorisation in this release: the operator bearer token. Partner access with SMART Backend
Services and per-partner isolation arrive with the FHIR API issue; until then no partner token
exists, so no partner can read anything.
"""

from __future__ import annotations

from email.utils import format_datetime
from typing import Any

from fastapi import APIRouter, Request, Response

from hub import __version__, canonical
from hub.api.deps import OperatorDep, ReadSession
from hub.errors import NotFound, ValidationFailed
from hub.fhirstore import indexing
from hub.fhirstore.repository import ResourceRepository, SearchParam, Stored, search
from hub.fhirstore.validation import SUPPORTED_TYPES

FHIR_JSON = "application/fhir+json"
router = APIRouter(prefix="/fhir")


def fhir_response(body: dict[str, Any], status: int = 200, stored: Stored | None = None) -> Response:
    headers = {}
    if stored is not None:
        headers["ETag"] = stored.etag
        headers["Last-Modified"] = format_datetime(stored.last_updated, usegmt=True)
    return Response(canonical.dumpb(body), status_code=status, media_type=FHIR_JSON, headers=headers)


def _type(resource_type: str) -> str:
    if resource_type not in SUPPORTED_TYPES:
        raise NotFound(f"resource type {resource_type} is not served here")
    return resource_type


def capability_statement(base_url: str) -> dict[str, Any]:
    resources = []
    for rtype in SUPPORTED_TYPES:
        resources.append(
            {
                "type": rtype,
                "versioning": "versioned",
                "readHistory": True,
                "interaction": [{"code": c} for c in ("read", "vread", "history-instance", "search-type")],
                "searchParam": [{"name": name, "type": kind} for name, kind in indexing.search_params_for(rtype)],
            }
        )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "kind": "instance",
        "software": {"name": "CGT Hub", "version": __version__},
        "implementation": {"description": "CGT Hub FHIR endpoint", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Reads of the therapy order master record and its resources. Writes arrive "
                "through the hub's commands (HL7 v2, FHIR order placement when enabled, portal).",
                "security": {
                    "cors": False,
                    "description": "Bearer token (operator). SMART Backend Services is not enabled in this release.",
                },
                "resource": resources,
            }
        ],
    }


@router.get("/metadata")
def metadata(request: Request) -> Response:
    return fhir_response(capability_statement(str(request.base_url).rstrip("/") + "/fhir"))


@router.get("/{resource_type}/{rid}")
def read(resource_type: str, rid: str, session: ReadSession, _: OperatorDep) -> Response:
    stored = ResourceRepository.from_session(session).read(_type(resource_type), rid)
    return fhir_response(stored.content, stored=stored)


@router.get("/{resource_type}/{rid}/_history/{vid}")
def vread(resource_type: str, rid: str, vid: int, session: ReadSession, _: OperatorDep) -> Response:
    stored = ResourceRepository.from_session(session).vread(_type(resource_type), rid, vid)
    if stored.deleted:
        raise NotFound(f"{resource_type}/{rid} version {vid} is a deletion")
    return fhir_response(stored.content, stored=stored)


@router.get("/{resource_type}/{rid}/_history")
def history(resource_type: str, rid: str, session: ReadSession, _: OperatorDep) -> Response:
    versions = ResourceRepository.from_session(session).history(_type(resource_type), rid)
    if not versions:
        raise NotFound(f"{resource_type}/{rid} is not known")
    entries = [
        {
            "fullUrl": f"{resource_type}/{rid}/_history/{v.version_id}",
            **({} if v.deleted else {"resource": v.content}),
            "request": {
                "method": "DELETE" if v.deleted else ("POST" if v.version_id == 1 else "PUT"),
                "url": f"{resource_type}/{rid}",
            },
        }
        for v in versions
    ]
    return fhir_response({"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries})


@router.get("/{resource_type}")
def search_type(resource_type: str, request: Request, session: ReadSession, _: OperatorDep) -> Response:
    rtype = _type(resource_type)
    params: list[SearchParam] = []
    count = 50
    for name, value in request.query_params.multi_items():
        if name == "_count":
            try:
                count = max(0, min(1000, int(value)))
            except ValueError:
                raise ValidationFailed("_count must be an integer") from None
        elif name == "_format":
            continue
        else:
            params.append(SearchParam(name, value))
    found = search(session, rtype, params, count=count)
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {"fullUrl": f"{rtype}/{s.id}", "resource": s.content, "search": {"mode": "match"}} for s in found
            ],
        }
    )
