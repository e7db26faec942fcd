"""Bus consumer that records every raised alert (idempotently: one row per event)."""

from __future__ import annotations

import logging

from sqlalchemy import insert

from hub.db.models import Alert
from hub.db.uow import Work
from hub.events import AlertRaised, Envelope, EventType
from hub.ids import uuid7
from hub.messaging.consumers import Consumer

log = logging.getLogger("hub.alerts")


def record_alert(work: Work, envelope: Envelope) -> None:
    payload = envelope.payload()
    assert isinstance(payload, AlertRaised)
    alert_id = uuid7()
    work.session.execute(
        insert(Alert).values(
            id=alert_id,
            event_id=envelope.event_id,
            order_id=payload.order_id,
            severity=payload.severity,
            kind=payload.kind,
            message=payload.message,
            raised_at=envelope.occurred_at,
        )
    )
    # ids and codes only: alert messages are written without PHI.
    log.warning("ALERT %s severity=%s kind=%s order=%s", alert_id, payload.severity, payload.kind, payload.order_id)


CONSUMERS = [Consumer("alerts", (EventType.ALERT_RAISED.value,), record_alert)]
