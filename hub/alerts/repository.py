"""Alert queries."""

from __future__ import annotations

import builtins
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.db.models import Alert


class AlertRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    @classmethod
    def from_session(cls, session: Session) -> AlertRepository:
        return cls(session)

    def list(self, *, order_id: str | None = None, open_only: bool = False, limit: int = 100) -> list[Alert]:
        stmt = select(Alert).order_by(Alert.raised_at.desc()).limit(limit)
        if order_id is not None:
            stmt = stmt.where(Alert.order_id == order_id)
        if open_only:
            stmt = stmt.where(Alert.acknowledged_at.is_(None))
        return list(self.session.scalars(stmt))

    def search(
        self,
        *,
        order_id: str | None = None,
        severity: str | None = None,
        kind: str | None = None,
        state: str = "all",
        since: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[tuple[Alert, int]]:
        """Alerts with their escalation level. ``kind`` matches a prefix (``temperature.``);
        ``state`` is open, acknowledged or all."""
        from hub.db.models_logistics import AlertEscalation

        levels = (
            select(AlertEscalation.alert_id, func.max(AlertEscalation.level).label("level"))
            .group_by(AlertEscalation.alert_id)
            .subquery()
        )
        stmt = (
            select(Alert, levels.c.level)
            .outerjoin(levels, levels.c.alert_id == Alert.id)
            .order_by(Alert.raised_at.desc(), Alert.id)
            .limit(limit)
            .offset(offset)
        )
        if order_id is not None:
            stmt = stmt.where(Alert.order_id == order_id)
        if severity is not None:
            stmt = stmt.where(Alert.severity == severity)
        if kind is not None:
            stmt = stmt.where(Alert.kind.startswith(kind, autoescape=True))
        if state == "open":
            stmt = stmt.where(Alert.acknowledged_at.is_(None))
        elif state == "acknowledged":
            stmt = stmt.where(Alert.acknowledged_at.is_not(None))
        if since is not None:
            stmt = stmt.where(Alert.raised_at >= since)
        return [(alert, int(level or 0)) for alert, level in self.session.execute(stmt).all()]

    def escalation_level(self, alert_id: str) -> int:
        from hub.db.models_logistics import AlertEscalation

        level = self.session.execute(
            select(func.max(AlertEscalation.level)).where(AlertEscalation.alert_id == alert_id)
        ).scalar_one_or_none()
        return int(level or 0)
