"""Bodies a hospital sends: a therapy order (contained patient and requester) and a transaction."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from hub.api.conformance import SITE_EXTENSION, THERAPY_ORDER
from hub.orders.fhir import PARTNER_SYSTEM, PRODUCT_SYSTEM

_n = itertools.count(1)
HOSPITAL_SYSTEM = "urn:oid:2.16.840.1.113883.3.8998.2"


def patient(mrn: str | None = None, family: str = "Rivera", birth: str = "1971-03-09") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": "urn:oid:2.16.840.1.113883.3.8998.1",
                "value": mrn or f"FMRN{uuid.uuid4().hex[:10]}",
            }
        ],
        "name": [{"family": family, "given": ["Ana"]}],
        "birthDate": birth,
        "gender": "female",
    }


def practitioner() -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
        "name": [{"family": "Okafor", "given": ["Chidi"]}],
    }


def placer(number: str | None = None) -> dict[str, Any]:
    return {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]},
        "system": HOSPITAL_SYSTEM,
        "value": number or f"F{next(_n):05d}-{uuid.uuid4().hex[:8]}",
    }


def site(role: str, partner: str) -> dict[str, Any]:
    return {
        "url": SITE_EXTENSION,
        "extension": [
            {"url": "role", "valueCode": role},
            {"url": "partner", "valueIdentifier": {"system": PARTNER_SYSTEM, "value": partner}},
        ],
    }


def order(
    number: str | None = None,
    *,
    product: str = "car-t-fresh",
    pat: dict[str, Any] | None = None,
    sites: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    p = dict(pat or patient())
    p["id"] = "p1"
    pr = practitioner()
    pr["id"] = "r1"
    return {
        "resourceType": "ServiceRequest",
        "meta": {"profile": [THERAPY_ORDER]},
        "contained": [p, pr],
        "extension": sites if sites is not None else [site("manufacturing", "leiden-cell-factory")],
        "identifier": [placer(number)],
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": PRODUCT_SYSTEM, "code": product}]},
        "subject": {"reference": "#p1"},
        "requester": {"reference": "#r1"},
    }


def order_transaction(number: str | None = None, pat: dict[str, Any] | None = None) -> dict[str, Any]:
    pu, ru, su = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    p = pat or patient()
    ident = p["identifier"][0]
    sr = order(number)
    sr.pop("contained")
    sr["subject"] = {"reference": pu}
    sr["requester"] = {"reference": ru}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": su,
                "resource": sr,
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
            {
                "fullUrl": pu,
                "resource": p,
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier={ident['system']}|{ident['value']}",
                },
            },
            {"fullUrl": ru, "resource": practitioner(), "request": {"method": "POST", "url": "Practitioner"}},
        ],
    }
