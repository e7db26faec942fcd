"""Alert queries."""

from __future__ import annotations

from sqlalchemy import select
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
