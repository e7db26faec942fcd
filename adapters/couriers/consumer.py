"""Processing of stored courier deliveries, continued from the bus.

``courier.webhook_received`` / ``telemetry.received`` name an inbox message. The consumer reads
its raw bytes, lets the courier's dialect and mapping turn them into canonical commands and hands
those to the logistics core. Each event runs in its own savepoint: one refused event (an unknown
tracking number, a guard) is recorded and alerted without undoing the others. The inbox row is
settled (handled / rejected) in the same transaction as the effects. A bug is not swallowed: the
consumer runner retries with backoff and dead-letters, and the message stays ``received``.
"""

from __future__ import annotations

from pathlib import Path

from adapters.couriers.dialects import PARSERS, parse_telemetry
from adapters.couriers.mapping import load_mapping
from adapters.registry import CourierWebhook
from hub.db.models import InboxMessage
from hub.db.uow import Work
from hub.errors import HubError
from hub.events import Envelope, EventType, InboundReceived
from hub.logistics.policy import Policy
from hub.logistics.schemas import CourierEvent, RecordReadings
from hub.logistics.service import ShipmentService, UnknownShipment, raise_alert
from hub.logistics.temperature import TemperatureService
from hub.messaging.consumers import Consumer
from hub.messaging.inbox import InboxStatus, settle
from hub.partners.loader import PartnerDirectory


def courier_consumer(partners: PartnerDirectory, mappings_dir: Path, policy: Policy | None = None) -> Consumer:
    rules = policy or Policy()

    def handle(work: Work, envelope: Envelope) -> None:
        payload = envelope.payload()
        assert isinstance(payload, InboundReceived)
        row = work.session.get(InboxMessage, payload.inbox_message_id)
        if row is None or row.status != InboxStatus.received.value:
            return  # already settled (a redelivery) or set aside by an operator
        profile = partners.get(payload.partner)
        channels = [
            c for c in (profile.channels_of("courier-webhook") if profile else []) if isinstance(c, CourierWebhook)
        ]
        if not channels:
            settle(work, row.id, InboxStatus.failed, error=f"partner {payload.partner} has no courier-webhook channel")
            return
        if envelope.type == EventType.TELEMETRY_RECEIVED.value:
            _telemetry(work, partners, row, payload.partner)
            return
        mapping = load_mapping(mappings_dir, channels[0].mapping)
        delivery = PARSERS[mapping.format](bytes(row.raw), None)
        service = ShipmentService(work, partners, rules)
        order_id: str | None = None
        problems: list[str] = []
        for raw_event in delivery.events:
            code, kind = mapping.resolve(raw_event.candidates)
            cmd = CourierEvent(
                courier=payload.partner,
                tracking_number=delivery.tracking_number or "",
                courier_code=code,
                kind=kind,
                occurred_at=raw_event.occurred_at,
                eta=raw_event.eta,
                location=raw_event.location,
                signed_by=raw_event.signed_by,
                logger=raw_event.logger,
                readings=raw_event.readings,
                inbox_message_id=row.id,
            )
            try:
                with work.attempt():
                    outcome = service.apply(cmd)
                    if outcome.shipment_id:
                        order_id = order_id or service.repo.shipment(outcome.shipment_id).order_id
            except UnknownShipment as exc:
                problems.append(exc.message)
                break  # every event of a delivery is about the same tracking number
            except HubError as exc:
                problems.append(f"{code}: {exc.message}")
        if problems:
            raise_alert(
                work,
                order_id,
                "warning",
                "courier.event-refused",
                f"{payload.partner} delivery {row.id}: " + "; ".join(problems)[:1500],
            )
            status = InboxStatus.rejected if order_id is None else InboxStatus.handled
            settle(work, row.id, status, error="; ".join(problems), order_id=order_id)
        else:
            settle(work, row.id, InboxStatus.handled, order_id=order_id)

    return Consumer(
        "couriers.deliveries",
        (EventType.COURIER_WEBHOOK_RECEIVED.value, EventType.TELEMETRY_RECEIVED.value),
        handle,
    )


def _telemetry(work: Work, partners: PartnerDirectory, row: InboxMessage, partner: str) -> None:
    batch = parse_telemetry(bytes(row.raw), None)
    try:
        with work.attempt():
            result = TemperatureService(work, partners).record(
                RecordReadings(
                    courier=partner, tracking_number=batch.tracking_number, logger=batch.logger, readings=batch.readings
                )
            )
    except HubError as exc:
        raise_alert(work, None, "warning", "telemetry.refused", f"{partner} telemetry {row.id}: {exc.message}"[:2000])
        settle(work, row.id, InboxStatus.rejected, error=exc.message)
        return
    order_id = ShipmentService(work, partners).repo.shipment(result.shipment_id).order_id
    settle(work, row.id, InboxStatus.handled, order_id=order_id)
