"""Builders for the FHIR R4 resources the core writes for an order (no storage here)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from hub.db.types import iso_utc
from hub.identity.isbt128 import CoI
from hub.products.schemas import Product, SpecLimit, Stage

HUB = "https://cgt-hub.org"
COI_SYSTEM = f"{HUB}/fhir/NamingSystem/isbt128-coi"
PARTNER_SYSTEM = f"{HUB}/fhir/NamingSystem/partner"
PRODUCT_SYSTEM = f"{HUB}/fhir/CodeSystem/therapy-product"
STAGE_SYSTEM = f"{HUB}/fhir/CodeSystem/journey-stage"
QC_SYSTEM = f"{HUB}/fhir/CodeSystem/release-test"
EXT_COI_CHECK = f"{HUB}/fhir/StructureDefinition/coi-check-character"
SITE_EXTENSION = f"{HUB}/fhir/StructureDefinition/cgt-site"


def placer_system(partner: str) -> str:
    return f"{HUB}/fhir/NamingSystem/placer/{partner}"


def task_id(order_id: str, index: int) -> str:
    return f"{order_id}-s{index:02d}"


def release_report_id(order_id: str) -> str:
    return f"{order_id}-release"


def coi_identifier(coi: CoI) -> dict[str, Any]:
    return {
        "use": "official",
        "type": {"text": "ISBT 128 Chain of Identity Identifier"},
        "system": COI_SYSTEM,
        "value": coi.data,
        "extension": [{"url": EXT_COI_CHECK, "valueString": coi.check}],
    }


def organization_id(partner_id: str) -> str:
    return f"org-{partner_id}"


def organization(partner_id: str, name: str) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "identifier": [{"system": PARTNER_SYSTEM, "value": partner_id}],
        "active": True,
        "name": name,
    }


def service_request(
    base: dict[str, Any] | None,
    *,
    coi: CoI,
    ordering_partner: str,
    placer_number: str,
    product: Product,
    patient_ref: str,
    requester_ref: str,
    performer_refs: list[str],
    authored: datetime,
    note: str | None,
    sites: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """The order's ServiceRequest. ``sites`` (role, partner id) are the sites the order was placed
    with, defaults included: they replace whatever site extensions the sender wrote, so the
    stored order (and the answer to a FHIR create) says which partner plays which role."""
    sr: dict[str, Any] = dict(base or {})
    sr["resourceType"] = "ServiceRequest"
    if sites is not None:
        kept = [e for e in sr.get("extension", []) if not (isinstance(e, dict) and e.get("url") == SITE_EXTENSION)]
        sr["extension"] = [*kept, *(site_extension(role, partner) for role, partner in sites)]
    sr.pop("id", None)
    sr.pop("meta", None)
    idents = [i for i in sr.get("identifier", []) if i.get("system") not in (COI_SYSTEM,)]
    if not any(i.get("system") == placer_system(ordering_partner) for i in idents):
        idents.append(
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]},
                "system": placer_system(ordering_partner),
                "value": placer_number,
            }
        )
    sr["identifier"] = [*idents, coi_identifier(coi)]
    sr["status"] = "active"
    sr["intent"] = "order"
    sr["category"] = [{"coding": [{"system": STAGE_SYSTEM, "code": "cell-therapy"}], "text": "Cell therapy"}]
    sr["code"] = {"coding": [{"system": PRODUCT_SYSTEM, "code": product.code, "display": product.name}]}
    sr["subject"] = {"reference": patient_ref}
    sr["requester"] = {"reference": requester_ref}
    sr["performer"] = [{"reference": r} for r in performer_refs]
    sr.setdefault("authoredOn", iso_utc(authored))
    if note:
        sr["note"] = [*sr.get("note", []), {"text": note}]
    return sr


def site_extension(role: str, partner: str) -> dict[str, Any]:
    return {
        "url": SITE_EXTENSION,
        "extension": [
            {"url": "role", "valueCode": role},
            {"url": "partner", "valueIdentifier": {"system": PARTNER_SYSTEM, "value": partner}},
        ],
    }


def without_site_extensions(sr: dict[str, Any], sites: list[tuple[str, str]]) -> dict[str, Any]:
    """The ServiceRequest minus the site extensions the hub built for ``sites`` (compared by value:
    an extension the sender wrote stays). What is left, the sender's content and the hub's own
    fields, is what order acceptance validates; the site extensions' shape is validated once per
    set of roles (:func:`validated_site_extension_shapes`). The hub's extensions come after the sender's,
    so an issue's FHIRPath (``ServiceRequest.extension[0]...``) is the same as in the stored order.

    Why: fhir.resources validates each Extension through ~55 choice fields in Python; the three
    Extension instances per site were ~0.36 ms of the ~0.5 ms an order's ServiceRequest took to
    validate. callgrind, sequential acceptance on SQLite: 19.4 → 14.8 million instructions per
    order (bench/README.md)."""
    built = [site_extension(role, partner) for role, partner in sites]
    kept = [e for e in sr.get("extension", []) if e not in built]
    out = {k: v for k, v in sr.items() if k != "extension"}
    if kept:
        out["extension"] = kept
    return out


# A partner id as the profile schema admits it (hub/partners/schemas.py: ^[a-z0-9][a-z0-9-]{1,62}$).
_SAMPLE_PARTNER = "a0"


@lru_cache(maxsize=32)
def validated_site_extension_shapes(roles: tuple[str, ...]) -> bool:
    """Validate, once per set of roles, a ServiceRequest carrying one site extension per role.

    A site extension differs from these only in the partner id, which order acceptance takes from
    a loaded partner profile (so it matches the schema's pattern: a valid FHIR string and
    identifier value). A test validates real stored orders whole."""
    from hub.fhirstore.validation import validate

    validate(
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/00000000-0000-4000-8000-000000000000"},
            "extension": [site_extension(role, _SAMPLE_PARTNER) for role in roles],
        },
        "ServiceRequest",
    )
    return True


def task(
    *, order_id: str, index: int, stage: Stage, coi: CoI, patient_ref: str, status: str, authored: datetime
) -> dict[str, Any]:
    t: dict[str, Any] = {
        "resourceType": "Task",
        "id": task_id(order_id, index),
        "identifier": [{"system": COI_SYSTEM + "/task", "value": f"{coi.data}-{index:02d}"}],
        "basedOn": [{"reference": f"ServiceRequest/{order_id}"}],
        "status": status,
        "intent": "order",
        "code": {"coding": [{"system": STAGE_SYSTEM, "code": stage.code, "display": stage.name}]},
        "description": stage.name,
        "focus": {"reference": f"ServiceRequest/{order_id}"},
        "for": {"reference": patient_ref},
        "authoredOn": iso_utc(authored),
    }
    if stage.checkpoints:
        t["input"] = [
            {
                "type": {"text": "identity checkpoint"},
                "valueCode": cp.value,
            }
            for cp in stage.checkpoints
        ]
    return t


def observation(
    *,
    order_id: str,
    patient_ref: str,
    spec: SpecLimit,
    value: str,
    unit: str | None,
    in_spec: bool,
    effective: datetime,
    performer_ref: str | None,
) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [{"system": QC_SYSTEM, "code": spec.code, "display": spec.name}]},
        "subject": {"reference": patient_ref},
        "basedOn": [{"reference": f"ServiceRequest/{order_id}"}],
        "effectiveDateTime": iso_utc(effective),
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "N" if in_spec else "A",
                    }
                ]
            }
        ],
    }
    if spec.loinc:
        obs["code"]["coding"].append({"system": "http://loinc.org", "code": spec.loinc})
    if spec.expected is None:
        quantity: dict[str, Any] = {"value": float(value)}
        if unit or spec.unit:
            quantity["unit"] = unit or spec.unit
        obs["valueQuantity"] = quantity
        rng: dict[str, Any] = {}
        if spec.min is not None:
            rng["low"] = {"value": spec.min, **({"unit": spec.unit} if spec.unit else {})}
        if spec.max is not None:
            rng["high"] = {"value": spec.max, **({"unit": spec.unit} if spec.unit else {})}
        obs["referenceRange"] = [rng]
    else:
        obs["valueString"] = value
        obs["referenceRange"] = [{"text": spec.expected}]
    if performer_ref:
        obs["performer"] = [{"reference": performer_ref}]
    return obs


def release_report(
    *,
    order_id: str,
    patient_ref: str,
    product: Product,
    result_refs: list[str],
    complete: bool,
    issued: datetime,
    all_in_spec: bool,
) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "id": release_report_id(order_id),
        "status": "final" if complete else "partial",
        "code": {
            "coding": [{"system": QC_SYSTEM, "code": "release-panel", "display": f"Release panel: {product.name}"}]
        },
        "subject": {"reference": patient_ref},
        "basedOn": [{"reference": f"ServiceRequest/{order_id}"}],
        "effectiveDateTime": iso_utc(issued),
        "issued": iso_utc(issued),
        "result": [{"reference": r} for r in result_refs],
        "conclusion": (
            "All release tests in specification"
            if complete and all_in_spec
            else "Release panel incomplete"
            if not complete
            else "One or more results out of specification"
        ),
    }


@lru_cache(maxsize=32)
def validated_task_shapes(product: Product) -> bool:
    """Validate, once per product definition, the Task of every stage with fhir.resources R4B.

    Order acceptance creates one Task per stage; these differ from the validated shapes only in
    ids, references, the CoI value and instants, so they are created without validating each again
    (11 validations per order were a fifth of acceptance time). A test validates real instances.
    """
    from hub.fhirstore.validation import validate
    from hub.identity.isbt128 import make_coi

    sample = make_coi("A9998", 2026, 1)
    for index, stage in enumerate(product.stages):
        for status in ("completed", "ready", "requested"):
            validate(
                task(
                    order_id="00000000-0000-4000-8000-000000000000",
                    index=index,
                    stage=stage,
                    coi=sample,
                    patient_ref="Patient/00000000-0000-4000-8000-000000000000",
                    status=status,
                    authored=datetime(2026, 1, 1, tzinfo=UTC),
                ),
                "Task",
            )
    return True
