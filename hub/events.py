"""The catalogue of every event type the hub publishes. One module, so a consumer author finds
every type, its payload and its routing in one place.

Routing key on the bus: ``p<partition>.<event type>``; the partition is a stable hash of the
aggregate (the order id), so all events of one order travel, in order, through one partition.
"""

from __future__ import annotations

import zlib
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


class EventType(StrEnum):
    ORDER_ACCEPTED = "order.accepted"
    ORDER_STAGE_CHANGED = "order.stage_changed"
    ORDER_HELD = "order.held"
    ORDER_HOLD_RELEASED = "order.hold_released"
    ORDER_CANCELLED = "order.cancelled"
    ORDER_RESULT_RECORDED = "order.result_recorded"
    IDENTITY_VERIFIED = "identity.verified"
    IDENTITY_MISMATCH = "identity.mismatch"
    CUSTODY_HANDOFF = "custody.handoff"
    SIGNATURE_APPLIED = "signature.applied"
    ALERT_RAISED = "alert.raised"
    # logistics (issue 5)
    COURIER_WEBHOOK_RECEIVED = "courier.webhook_received"
    TELEMETRY_RECEIVED = "telemetry.received"
    SHIPMENT_BOOKING_REQUESTED = "shipment.booking_requested"
    SHIPMENT_STATUS_CHANGED = "shipment.status_changed"
    TEMPERATURE_EXCURSION = "temperature.excursion"
    CUSTOMS_STATUS_CHANGED = "customs.status_changed"
    VIABILITY_ESCALATED = "viability.escalated"
    CONDITIONING_SCHEDULED = "conditioning.scheduled"
    ALERT_ACKNOWLEDGED = "alert.acknowledged"
    ALERT_ESCALATED = "alert.escalated"
    ORDER_COLLECTION_SCHEDULED = "order.collection_scheduled"
    SUBSCRIPTION_DELIVERY_FAILED = "subscription.delivery_failed"


class EventPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrderAccepted(EventPayload):
    order_id: str
    coi: str
    product_code: str
    ordering_partner: str
    placer_number: str
    stage: str


class OrderStageChanged(EventPayload):
    order_id: str
    coi: str
    from_stage: str | None
    to_stage: str
    status: str


class OrderHeld(EventPayload):
    order_id: str
    coi: str
    hold_id: str
    kind: str
    reason: str


class OrderHoldReleased(EventPayload):
    order_id: str
    coi: str
    hold_id: str
    qa_decision_id: str | None


class OrderCancelled(EventPayload):
    order_id: str
    coi: str
    reason: str


class OrderResultRecorded(EventPayload):
    order_id: str
    coi: str
    test_code: str
    in_spec: bool
    observation_id: str


class IdentityVerified(EventPayload):
    order_id: str
    coi: str
    verification_id: str
    checkpoint: str
    result: str


class CustodyHandoffEvent(EventPayload):
    order_id: str
    coi: str
    handoff_id: str
    material: str
    from_party: str
    to_party: str


class SignatureApplied(EventPayload):
    signature_id: str
    record: str
    meaning: str


class AlertRaised(EventPayload):
    order_id: str | None
    severity: str  # info | warning | critical
    kind: str
    message: str  # never PHI: ids, codes and reasons only


class InboundReceived(EventPayload):
    """A partner message is in the inbox; its processing continues from the bus."""

    partner: str
    channel: str
    inbox_message_id: str


class ShipmentBookingRequested(EventPayload):
    order_id: str
    shipment_id: str
    courier: str
    leg: str


class ShipmentStatusChanged(EventPayload):
    order_id: str
    shipment_id: str
    courier: str
    leg: str
    status: str
    event: str
    tracking_number: str | None = None
    eta: datetime | None = None


class TemperatureExcursionEvent(EventPayload):
    order_id: str
    shipment_id: str
    excursion_id: str
    kind: str
    state: str  # opened | escalated | closed
    peak: float
    minutes: float


class CustomsStatusChanged(EventPayload):
    order_id: str
    shipment_id: str
    declaration_id: str
    status: str


class ViabilityEscalated(EventPayload):
    order_id: str
    coi: str
    level: str
    deadline: datetime
    remaining_minutes: float


class ConditioningScheduled(EventPayload):
    order_id: str
    conditioning_start: datetime
    planned_infusion_at: datetime


class AlertAcknowledged(EventPayload):
    alert_id: str
    by: str


class AlertEscalated(EventPayload):
    alert_id: str
    order_id: str | None
    level: int
    severity: str
    kind: str


class CollectionScheduled(EventPayload):
    order_id: str
    coi: str
    appointment_id: str
    action: str  # book | reschedule | modify | cancel
    status: str  # booked | cancelled
    start: datetime
    end: datetime | None


class SubscriptionDeliveryFailed(EventPayload):
    """A FHIR Subscription notification gave up after its last attempt (it can be replayed)."""

    delivery_id: str
    subscription_id: str
    partner_id: str
    order_id: str | None
    attempts: int


PAYLOADS: dict[EventType, type[EventPayload]] = {
    EventType.ORDER_ACCEPTED: OrderAccepted,
    EventType.ORDER_STAGE_CHANGED: OrderStageChanged,
    EventType.ORDER_HELD: OrderHeld,
    EventType.ORDER_HOLD_RELEASED: OrderHoldReleased,
    EventType.ORDER_CANCELLED: OrderCancelled,
    EventType.ORDER_RESULT_RECORDED: OrderResultRecorded,
    EventType.IDENTITY_VERIFIED: IdentityVerified,
    EventType.IDENTITY_MISMATCH: IdentityVerified,
    EventType.CUSTODY_HANDOFF: CustodyHandoffEvent,
    EventType.SIGNATURE_APPLIED: SignatureApplied,
    EventType.ALERT_RAISED: AlertRaised,
    EventType.COURIER_WEBHOOK_RECEIVED: InboundReceived,
    EventType.TELEMETRY_RECEIVED: InboundReceived,
    EventType.SHIPMENT_BOOKING_REQUESTED: ShipmentBookingRequested,
    EventType.SHIPMENT_STATUS_CHANGED: ShipmentStatusChanged,
    EventType.TEMPERATURE_EXCURSION: TemperatureExcursionEvent,
    EventType.CUSTOMS_STATUS_CHANGED: CustomsStatusChanged,
    EventType.VIABILITY_ESCALATED: ViabilityEscalated,
    EventType.CONDITIONING_SCHEDULED: ConditioningScheduled,
    EventType.ALERT_ACKNOWLEDGED: AlertAcknowledged,
    EventType.ALERT_ESCALATED: AlertEscalated,
    EventType.ORDER_COLLECTION_SCHEDULED: CollectionScheduled,
    EventType.SUBSCRIPTION_DELIVERY_FAILED: SubscriptionDeliveryFailed,
}


class Envelope(BaseModel):
    """What travels on the bus."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    type: str
    aggregate_id: str
    partition: int
    occurred_at: datetime
    data: dict[str, Any]

    def routing_key(self) -> str:
        return f"p{self.partition}.{self.type}"

    def payload(self) -> EventPayload:
        return PAYLOADS[EventType(self.type)].model_validate(self.data)


def partition_of(aggregate_id: str, partitions: int) -> int:
    return zlib.crc32(aggregate_id.encode()) % max(1, partitions)
