"""GET /alerts (filters) and POST /alerts/{id}/acknowledge, for hub operators."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from hub.alerts.repository import AlertRepository
from hub.alerts.schemas import Acknowledge, AlertView
from hub.alerts.service import AlertService
from hub.api.deps import CtxDep, OperatorDep, ReadSession
from hub.db.models import Alert
from hub.instants import Instant

router = APIRouter(prefix="/alerts", tags=["alerts"])


def _view(alert: Alert, level: int) -> AlertView:
    return AlertView(
        id=alert.id,
        order_id=alert.order_id,
        severity=alert.severity,
        kind=alert.kind,
        message=alert.message,
        raised_at=alert.raised_at,
        acknowledged_at=alert.acknowledged_at,
        acknowledged_by=alert.acknowledged_by,
        escalation_level=level,
    )


@router.get("", response_model=list[AlertView])
def list_alerts(
    session: ReadSession,
    _: OperatorDep,
    order: Annotated[str | None, Query(max_length=64)] = None,
    severity: Annotated[Literal["info", "warning", "critical"] | None, Query()] = None,
    kind: Annotated[str | None, Query(max_length=64, description="prefix, e.g. temperature.")] = None,
    state: Annotated[Literal["open", "acknowledged", "all"], Query()] = "all",
    since: Annotated[Instant | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[AlertView]:
    rows = AlertRepository.from_session(session).search(
        order_id=order, severity=severity, kind=kind, state=state, since=since, limit=limit, offset=offset
    )
    return [_view(a, level) for a, level in rows]


@router.post("/{alert_id}/acknowledge", response_model=AlertView)
async def acknowledge(alert_id: str, body: Acknowledge, ctx: CtxDep, operator: OperatorDep) -> AlertView:
    alert = await ctx.store.run_async(
        lambda w: AlertService(w).acknowledge(alert_id, body.by, body.note), actor=f"{operator}:{body.by}"
    )
    level = await ctx.store.read_async(lambda s: AlertRepository.from_session(s).escalation_level(alert.id))
    return _view(alert, level)
