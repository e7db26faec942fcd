"""Commands the logistics core accepts and the views it returns (no partner dialect here)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from hub.instants import Instant


class ShipmentEventKind(StrEnum):
    """The canonical shipment events every courier dialect is mapped to (mappings/couriers/)."""

    booked = "booked"
    picked_up = "picked-up"
    in_transit = "in-transit"
    customs_hold = "customs-hold"
    out_for_delivery = "out-for-delivery"
    delivered = "delivered"
    exception = "exception"


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BookShipment(Command):
    """Ask the hub to book the courier for the leg that departs at the order's next courier stage."""

    order_id: str
    leg: str | None = None  # the product's leg code; default: the next leg of the journey
    courier: str | None = None  # partner id; default: the order's courier participant
    pickup_after: Instant | None = None
    customs_partner: str | None = None  # for an international leg


class RegisterShipment(Command):
    """A shipment booked outside the hub (by phone, on the courier's portal): tracked by number."""

    order_id: str
    leg: str
    courier: str
    tracking_number: str = Field(min_length=1, max_length=64)
    eta: Instant | None = None
    customs_partner: str | None = None


class Reading(Command):
    at: Instant
    temperature_c: float | None = Field(default=None, ge=-273.15, le=200)
    ln2_percent: float | None = Field(default=None, ge=0, le=100)


class CourierEvent(Command):
    """One courier status event, already translated by the adapter's mapping."""

    courier: str
    tracking_number: str
    courier_code: str
    kind: ShipmentEventKind | None  # None: the code is not in the mapping (recorded, alerted)
    occurred_at: Instant
    eta: Instant | None = None
    location: str | None = Field(default=None, max_length=128)
    signed_by: str | None = None
    logger: str | None = None
    readings: tuple[Reading, ...] = ()
    inbox_message_id: str | None = None


class RecordReadings(Command):
    """A batch of logger readings for one shipment (telemetry endpoint or inside a webhook)."""

    courier: str
    tracking_number: str
    logger: str = Field(min_length=1, max_length=64)
    readings: tuple[Reading, ...] = Field(min_length=1, max_length=10_000)


class ScheduleConditioning(Command):
    order_id: str
    conditioning_start: Instant
    planned_infusion_at: Instant | None = None


class ShipmentView(BaseModel):
    id: str
    order_id: str
    leg: str
    courier: str
    origin: str
    destination: str
    status: str
    tracking_number: str | None
    eta: datetime | None
    picked_up_at: datetime | None
    delivered_at: datetime | None
    pending_stage: str | None
    customs_partner: str | None
    task_id: str
