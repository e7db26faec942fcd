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
