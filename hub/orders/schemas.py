"""Commands the core accepts (from any adapter) and the views it returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hub.instants import Instant
from hub.products.schemas import Checkpoint


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sites(Command):
    collection: str
    manufacturing: str
    treatment: str
    lab: str | None = None
    courier: str | None = None


class PlaceOrder(Command):
    """A therapy order as any adapter hands it over, already in canonical FHIR (R4) form."""

    ordering_partner: str
    placer_number: str = Field(min_length=1, max_length=128)
    product_code: str
    patient: dict[str, Any]
    requester: dict[str, Any]
    service_request: dict[str, Any] | None = None
    sites: Sites
    conditioning_start: Instant | None = None
    note: str | None = None


class Advance(Command):
    order_id: str
    to_stage: str
    occurred_at: Instant | None = None
    note: str | None = None


class PlaceHold(Command):
    order_id: str
    reason: str = Field(min_length=3)
    kind: str = "manual"


class SignerCredentials(Command):
    """Re-authentication at the moment of signing (Part 11 §11.200): name and password, each time."""

    username: str
    password: str = Field(repr=False)


class ReleaseHold(Command):
    order_id: str
    hold_id: str
    rationale: str = Field(min_length=10)
    signer: SignerCredentials


class Cancel(Command):
    order_id: str
    reason: str = Field(min_length=3)


class RecordResult(Command):
    order_id: str
    test_code: str
    value: str = Field(min_length=1, max_length=64)
    unit: str | None = None
    performer: str | None = None  # partner id of the lab
    occurred_at: Instant | None = None


class Scan(Command):
    value: str = Field(min_length=1, max_length=512)
    # auto: ISBT 128 ('=' or '&') or GS1; keyed: eye-readable CoI typed by a person (check
    # character required); patient: a patient wristband identifier.
    kind: str = Field(default="auto", pattern=r"^(auto|isbt128|gs1|keyed|patient)$")


class VerifyIdentity(Command):
    order_id: str
    checkpoint: Checkpoint
    scans: tuple[Scan, ...] = Field(min_length=1)
    operator: str
    method: str = Field(pattern=r"^(barcode|rfid|manual|portal)$")
    device: str | None = None
    site: str | None = None
    step: str | None = None  # the processing step, for processing-step checkpoints
    second_person: str | None = None
    occurred_at: Instant | None = None
    timezone: str | None = None


class RecordHandoff(Command):
    order_id: str
    material: str = Field(pattern=r"^(apheresis|product|qc-sample)$")
    from_party: str
    to_party: str
    at: Instant | None = None
    location: str | None = None
    reference: str | None = None


class OrderView(BaseModel):
    id: str
    coi: str
    coi_eye_readable: str
    coi_barcode: str
    product_code: str
    stage: str
    status: str
    ordering_partner: str
    placer_number: str
    patient_id: str
    viability_deadline: datetime | None = None


class VerificationView(BaseModel):
    id: str
    order_id: str
    checkpoint: str
    result: str
    reason: str | None
    order_status: str
    hold_id: str | None = None
