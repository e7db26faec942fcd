"""Decisions about alerts: acknowledgement by a named person, escalation when nobody does.

An alert is raised as an ``alert.raised`` event and recorded by the ``alerts`` consumer. A person
acknowledges it by name (``acknowledge``); the acknowledgement is kept (``alert_acknowledgement``),
audited and announced (``alert.acknowledged``). An alert nobody acknowledged within its severity's
time (``Policy.escalation_minutes``: critical 15 min, warning 2 h by default; info never) is
escalated: level 1, 2, … up to ``escalation_max_levels``, one ``alert.escalated`` event each (the
notification side pages the next person in line from it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from hub.alerts.repository import AlertRepository
from hub.db.models import Alert
from hub.db.models_logistics import AlertAcknowledgement, AlertEscalation
from hub.db.uow import Work
from hub.errors import GuardFailed, NotFound
from hub.events import AlertAcknowledged, AlertEscalated, EventType

if TYPE_CHECKING:
    from hub.logistics.policy import Policy


@dataclass
class AlertService:
    work: Work

    @property
    def repo(self) -> AlertRepository:
        return AlertRepository.from_session(self.work.session)

    def acknowledge(self, alert_id: str, by: str, note: str | None = None) -> Alert:
        alert = self.work.session.execute(
            select(Alert).where(Alert.id == alert_id).with_for_update()
        ).scalar_one_or_none()
        if alert is None:
            raise NotFound(f"alert {alert_id} is not known")
        if alert.acknowledged_at is not None:
            raise GuardFailed(f"alert {alert_id} was already acknowledged by {alert.acknowledged_by}")
        alert.acknowledged_at = self.work.now
        alert.acknowledged_by = by
        self.work.session.add(
            AlertAcknowledgement(id=str(uuid.uuid4()), alert_id=alert.id, by=by, note=note, at=self.work.now)
        )
        self.work.session.flush()
        self.work.audit(
            "update",
            "Alert",
            alert.id,
            old={"acknowledged": False},
            new={"acknowledged_by": by},
            reason=note or "acknowledged",
        )
        self.work.emit(
            EventType.ALERT_ACKNOWLEDGED, alert.order_id or alert.id, AlertAcknowledged(alert_id=alert.id, by=by)
        )
        return alert

    def escalate_due(self, policy: Policy) -> int:
        """Escalate every open alert whose severity's time ran out since it was raised (or last
        escalated). Each level once (primary key), so concurrent sweeps cannot double-page."""
        done = 0
        session = self.work.session
        for severity, minutes in policy.escalation_minutes.items():
            if minutes <= 0:
                continue
            step = timedelta(minutes=minutes)
            levels = (
                select(AlertEscalation.alert_id, func.max(AlertEscalation.level).label("level"))
                .group_by(AlertEscalation.alert_id)
                .subquery()
            )
            rows = session.execute(
                select(Alert, levels.c.level)
                .outerjoin(levels, levels.c.alert_id == Alert.id)
                .where(
                    Alert.acknowledged_at.is_(None), Alert.severity == severity, Alert.raised_at <= self.work.now - step
                )
            ).all()
            for alert, level in rows:
                current = level or 0
                if current >= policy.escalation_max_levels:
                    continue
                if alert.raised_at + step * (current + 1) > self.work.now:
                    continue
                event_id = self.work.emit(
                    EventType.ALERT_ESCALATED,
                    alert.order_id or alert.id,
                    AlertEscalated(
                        alert_id=alert.id,
                        order_id=alert.order_id,
                        level=current + 1,
                        severity=alert.severity,
                        kind=alert.kind,
                    ),
                )
                session.add(
                    AlertEscalation(alert_id=alert.id, level=current + 1, escalated_at=self.work.now, event_id=event_id)
                )
                done += 1
        session.flush()
        return done
