"""FHIR R4 shapes of logistics records (builders only, no storage).

A shipment leg is an R4 ``Task`` whose elements map one-to-one to the R5 ``Transport`` resource;
what R4's Task cannot say is carried as extensions, so moving to R5 is mechanical:

| R5 Transport           | R4 Task                                                              |
|------------------------|----------------------------------------------------------------------|
| identifier             | identifier (hub shipment id; courier tracking number)                |
| basedOn                | basedOn (the therapy order's ServiceRequest)                          |
| partOf                 | partOf (the journey step Task of the stage the leg departs at)       |
| status                 | extension ``transport-status`` (R5 codes); Task.status the nearest R4 |
| statusReason           | statusReason (the courier's last code)                               |
| intent                 | intent = order                                                       |
| code                   | code (the product's leg code)                                        |
| description            | description                                                          |
| focus                  | focus (the ServiceRequest: the material travels under its CoI)       |
| for                    | for (the Patient)                                                    |
| authoredOn/lastModified| authoredOn/lastModified                                              |
| completionTime         | executionPeriod.end (delivery); executionPeriod.start is the pickup  |
| owner                  | owner (the courier's Organization)                                   |
| requestedLocation      | extension ``transport-requestedLocation`` (destination Location)      |
| currentLocation        | extension ``transport-currentLocation`` (courier's last location)     |
| restriction            | restriction.period.end (latest acceptable arrival: viability)       |
| input                  | input (temperature range of the leg)                                 |
| output                 | output (proof of delivery: who signed)                               |
| (no R5 element)        | extension ``expected-arrival`` (the courier's ETA), ``transport-origin`` |
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hub.db.types import iso_utc
from hub.orders.fhir import COI_SYSTEM, HUB, PARTNER_SYSTEM
from hub.products.schemas import Leg, TemperatureRange

SHIPMENT_SYSTEM = f"{HUB}/fhir/NamingSystem/shipment"
LEG_SYSTEM = f"{HUB}/fhir/CodeSystem/transport-leg"
COLD_CHAIN_SYSTEM = f"{HUB}/fhir/CodeSystem/cold-chain"
COURIER_CODE_SYSTEM = f"{HUB}/fhir/CodeSystem/courier-status"
LOGGER_SYSTEM = f"{HUB}/fhir/NamingSystem/temperature-logger"
EXT = f"{HUB}/fhir/StructureDefinition"
EXT_TRANSPORT_STATUS = f"{EXT}/transport-status"
EXT_REQUESTED_LOCATION = f"{EXT}/transport-requestedLocation"
EXT_CURRENT_LOCATION = f"{EXT}/transport-currentLocation"
EXT_ORIGIN = f"{EXT}/transport-origin"
EXT_ETA = f"{EXT}/expected-arrival"
UCUM = "http://unitsofmeasure.org"

# canonical shipment status -> (R4 Task.status, R5 Transport.status)
STATUS = {
    "planned": ("requested", "planned"),
    "booking": ("requested", "planned"),
    "booked": ("accepted", "planned"),
    "picked-up": ("in-progress", "in-progress"),
    "in-transit": ("in-progress", "in-progress"),
    "customs-hold": ("on-hold", "in-progress"),
    "out-for-delivery": ("in-progress", "in-progress"),
    "exception": ("in-progress", "in-progress"),
    "delivered": ("completed", "completed"),
    "failed": ("failed", "abandoned"),
    "cancelled": ("cancelled", "cancelled"),
}


def location_id(partner_id: str) -> str:
    return f"loc-{partner_id}"


def location(partner_id: str, name: str) -> dict[str, Any]:
    return {
        "resourceType": "Location",
        "identifier": [{"system": PARTNER_SYSTEM, "value": partner_id}],
        "status": "active",
        "name": name,
        "managingOrganization": {"reference": f"Organization/org-{partner_id}"},
    }


def _range(t: TemperatureRange) -> dict[str, Any]:
    rng: dict[str, Any] = {}
    if t.min_c is not None:
        rng["low"] = {"value": t.min_c, "unit": "Cel", "system": UCUM, "code": "Cel"}
    if t.max_c is not None:
        rng["high"] = {"value": t.max_c, "unit": "Cel", "system": UCUM, "code": "Cel"}
    return rng


def transport_task(
    *,
    task_id: str,
    shipment_id: str,
    order_id: str,
    coi: str,
    patient_id: str,
    part_of_task: str,
    leg: Leg,
    courier: str,
    origin: str,
    destination: str,
    status: str,
    authored: datetime,
    modified: datetime,
    tracking_number: str | None = None,
    courier_code: str | None = None,
    eta: datetime | None = None,
    picked_up_at: datetime | None = None,
    delivered_at: datetime | None = None,
    current_location: str | None = None,
    latest_arrival: datetime | None = None,
    signed_by: str | None = None,
) -> dict[str, Any]:
    r4, r5 = STATUS[status]
    identifiers: list[dict[str, Any]] = [
        {"system": SHIPMENT_SYSTEM, "value": shipment_id},
        {"system": COI_SYSTEM + "/shipment", "value": f"{coi}-{leg.code}"},
    ]
    if tracking_number:
        identifiers.append({"system": f"{SHIPMENT_SYSTEM}/tracking/{courier}", "value": tracking_number})
    extensions: list[dict[str, Any]] = [
        {"url": EXT_TRANSPORT_STATUS, "valueCode": r5},
        {"url": EXT_ORIGIN, "valueReference": {"reference": f"Location/{location_id(origin)}"}},
        {"url": EXT_REQUESTED_LOCATION, "valueReference": {"reference": f"Location/{location_id(destination)}"}},
    ]
    if current_location:
        extensions.append({"url": EXT_CURRENT_LOCATION, "valueReference": {"display": current_location}})
    if eta is not None:
        extensions.append({"url": EXT_ETA, "valueDateTime": iso_utc(eta)})
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": task_id,
        "extension": extensions,
        "identifier": identifiers,
        "basedOn": [{"reference": f"ServiceRequest/{order_id}"}],
        "partOf": [{"reference": f"Task/{part_of_task}"}],
        "status": r4,
        "intent": "order",
        "code": {"coding": [{"system": LEG_SYSTEM, "code": leg.code, "display": leg.name}]},
        "description": leg.name,
        "focus": {"reference": f"ServiceRequest/{order_id}"},
        "for": {"reference": f"Patient/{patient_id}"},
        "authoredOn": iso_utc(authored),
        "lastModified": iso_utc(modified),
        "owner": {"reference": f"Organization/org-{courier}"},
        "input": [{"type": {"text": "temperature range"}, "valueRange": _range(leg.temperature)}],
    }
    if courier_code:
        task["statusReason"] = {"coding": [{"system": f"{COURIER_CODE_SYSTEM}/{courier}", "code": courier_code}]}
    period: dict[str, str] = {}
    if picked_up_at is not None:
        period["start"] = iso_utc(picked_up_at)
    if delivered_at is not None:
        period["end"] = iso_utc(delivered_at)
    if period:
        task["executionPeriod"] = period
    if latest_arrival is not None:
        task["restriction"] = {"period": {"end": iso_utc(latest_arrival)}}
    if signed_by:
        task["output"] = [{"type": {"text": "proof of delivery: signed by"}, "valueString": signed_by}]
    return task


def _quantity(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": round(value, 3), "unit": unit, "system": UCUM, "code": code}


def temperature_summary(
    *,
    order_id: str,
    patient_id: str,
    task_id: str,
    logger: str,
    leg: Leg,
    start: datetime,
    end: datetime,
    count: int,
    out_of_range: int,
    min_c: float | None,
    max_c: float | None,
    mean_c: float | None,
    min_ln2: float | None,
) -> dict[str, Any]:
    """One Observation per received batch: the readings themselves stay in temperature_reading."""
    components: list[dict[str, Any]] = [
        {"code": {"coding": [{"system": COLD_CHAIN_SYSTEM, "code": "reading-count"}]}, "valueInteger": count},
        {"code": {"coding": [{"system": COLD_CHAIN_SYSTEM, "code": "out-of-range"}]}, "valueInteger": out_of_range},
    ]
    for code, value in (("minimum", min_c), ("maximum", max_c), ("mean", mean_c)):
        if value is not None:
            components.append(
                {
                    "code": {"coding": [{"system": COLD_CHAIN_SYSTEM, "code": f"temperature-{code}"}]},
                    "valueQuantity": _quantity(value, "Cel", "Cel"),
                }
            )
    if min_ln2 is not None:
        components.append(
            {
                "code": {"coding": [{"system": COLD_CHAIN_SYSTEM, "code": "ln2-level-minimum"}]},
                "valueQuantity": _quantity(min_ln2, "%", "%"),
            }
        )
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": COLD_CHAIN_SYSTEM, "code": "cold-chain"}]}],
        "code": {"coding": [{"system": COLD_CHAIN_SYSTEM, "code": "shipment-temperature"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "focus": [{"reference": f"Task/{task_id}"}],
        "basedOn": [{"reference": f"ServiceRequest/{order_id}"}],
        "effectivePeriod": {"start": iso_utc(start), "end": iso_utc(end)},
        "device": {"identifier": {"system": LOGGER_SYSTEM, "value": logger}},
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "A" if out_of_range else "N",
                    }
                ]
            }
        ],
        "referenceRange": [_range(leg.temperature) or {"text": "no temperature limits"}],
        "component": components,
    }


def excursion_observation(
    *,
    order_id: str,
    patient_id: str,
    task_id: str,
    leg: Leg,
    kind: str,
    start: datetime,
    end: datetime | None,
    peak: float,
    minutes: float,
    escalated: bool,
) -> dict[str, Any]:
    unit, code = ("%", "%") if kind == "ln2-low" else ("Cel", "Cel")
    interpretation = "H" if kind == "too-warm" else "L"
    period: dict[str, str] = {"start": iso_utc(start)}
    if end is not None:
        period["end"] = iso_utc(end)
    return {
        "resourceType": "Observation",
        "status": "final" if end is not None else "preliminary",
        "category": [{"coding": [{"system": COLD_CHAIN_SYSTEM, "code": "cold-chain"}]}],
        "code": {"coding": [{"system": COLD_CHAIN_SYSTEM, "code": f"excursion-{kind}"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "focus": [{"reference": f"Task/{task_id}"}],
        "basedOn": [{"reference": f"ServiceRequest/{order_id}"}],
        "effectivePeriod": period,
        "valueQuantity": _quantity(peak, unit, code),
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": interpretation,
                    }
                ]
            }
        ],
        "referenceRange": [_range(leg.temperature) or {"text": "no temperature limits"}],
        "component": [
            {
                "code": {"coding": [{"system": COLD_CHAIN_SYSTEM, "code": "excursion-duration"}]},
                "valueQuantity": _quantity(minutes, "min", "min"),
            },
            {
                "code": {"coding": [{"system": COLD_CHAIN_SYSTEM, "code": "escalated"}]},
                "valueBoolean": escalated,
            },
        ],
    }
