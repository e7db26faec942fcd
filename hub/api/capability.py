"""The CapabilityStatement, generated from what the routes actually serve: the type list, the
interactions per type (AuditEvent read-only), the indexed search parameters, ``_include``
targets, the operations, and the SMART Backend Services security block."""

from __future__ import annotations

from typing import Any

from hub import __version__
from hub.api.fhir_service import READ_ONLY_TYPES
from hub.fhirstore import indexing
from hub.fhirstore.validation import SUPPORTED_TYPES

FHIR_JSON = "application/fhir+json"
READ_INTERACTIONS = ("read", "vread", "history-instance", "history-type", "search-type")
WRITE_INTERACTIONS = ("create", "update")
OPERATIONS = [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}]


def interactions(resource_type: str) -> tuple[str, ...]:
    if resource_type in READ_ONLY_TYPES:
        return READ_INTERACTIONS
    return READ_INTERACTIONS + WRITE_INTERACTIONS


def capability_statement(base_url: str, token_url: str) -> dict[str, Any]:
    from hub.api.conformance import THERAPY_ORDER, registry

    resources = []
    for rtype in SUPPORTED_TYPES:
        codes = interactions(rtype)
        entry: dict[str, Any] = {
            "type": rtype,
            "versioning": "versioned",
            "readHistory": True,
            "updateCreate": False,
            "conditionalCreate": "create" in codes,
            "conditionalRead": "full-support",
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "interaction": [{"code": c} for c in codes],
            "searchInclude": [f"{rtype}:{p}" for p in indexing.REFERENCE_PARAMS.get(rtype, {})],
            "searchParam": [{"name": name, "type": kind} for name, kind in indexing.search_params_for(rtype)],
            "operation": OPERATIONS,
        }
        if not entry["searchInclude"]:
            del entry["searchInclude"]
        profiles = [url for url, p in registry().profiles.items() if p.type == rtype]
        if rtype == "ServiceRequest":
            entry["profile"] = THERAPY_ORDER
        if profiles:
            entry["supportedProfile"] = profiles
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "kind": "instance",
        "software": {"name": "CGT Hub", "version": __version__},
        "implementation": {"description": "CGT Hub FHIR endpoint", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "json"],
        "patchFormat": [],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "The therapy order master record and its resources. A ServiceRequest POSTed by a partner is "
                    "a therapy order (profile cgt-therapy-order) placed through the hub's order command; journey "
                    "changes appear as Task updates. Partners see only the orders they take part in."
                ),
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [{"url": "token", "valueUri": token_url}],
                        }
                    ],
                    "description": (
                        "SMART Backend Services: client_credentials with a private_key_jwt assertion (RS384 or "
                        "ES384), system/<Type>.cruds scopes, access tokens of at most 300 s, no refresh tokens. "
                        "Hub operators use the operator bearer token."
                    ),
                },
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
                "operation": OPERATIONS,
            }
        ],
    }
