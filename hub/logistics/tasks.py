"""Bus consumers of the logistics core.

``logistics.pending-stages``: a stage move a courier event asked for, refused because a guard did
not hold yet (typically the identity verification of the stage), is tried again whenever the
order's identity, stage or holds change — so a pickup recorded before the courier-handoff scan
moves the journey as soon as the scan is made, and never before.
"""

from __future__ import annotations

from hub.db.uow import Work
from hub.events import Envelope, EventType
from hub.logistics.service import ShipmentService
from hub.messaging.consumers import Consumer
from hub.partners.loader import PartnerDirectory


def pending_stages(partners: PartnerDirectory) -> Consumer:
    def handle(work: Work, envelope: Envelope) -> None:
        order_id = envelope.data.get("order_id")
        if isinstance(order_id, str):
            ShipmentService(work, partners).retry_pending(order_id)

    return Consumer(
        "logistics.pending-stages",
        (EventType.IDENTITY_VERIFIED.value, EventType.ORDER_STAGE_CHANGED.value, EventType.ORDER_HOLD_RELEASED.value),
        handle,
    )
