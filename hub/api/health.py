"""Liveness, readiness (database and bus) and metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.api.deps import CtxDep
from hub.api.metrics import ALERTS_OPEN, AUDIT_ENTRIES, DEAD_LETTERS, HL7V2_OUTBOUND, OUTBOX_PENDING, REGISTRY
from hub.db.migrate import applied_revisions, current_heads
from hub.db.models import Alert, AuditHead, DeadLetter, OutboxEvent
from hub.db.models_hl7v2 import Hl7v2Outbound
from hub.db.uow import Store

router = APIRouter()
log = logging.getLogger(__name__)
T = TypeVar("T")

# How long /readyz and /metrics wait for the database (and /readyz for the bus). A probe must get
# an answer even when the database hangs (a stopped server, a partition): "not ready" within a
# bound, never a request that hangs with it. Give the prober a timeout above this (3 s or more).
CHECK_TIMEOUT_S = 2.0


class CheckTimedOut(TimeoutError):
    """The database did not answer a health check in time."""


async def _bounded(request: Request, name: str, fn: Callable[[], T]) -> T:
    """Run the blocking ``fn`` in a thread and wait for it at most ``CHECK_TIMEOUT_S``.

    A thread cannot be cancelled: a check that timed out goes on waiting for the database. So
    while an earlier check of the same name is still running, a new request waits for that one
    instead of starting another, or every probe against a hung database would leave one more
    thread (and pooled connection) stuck, until the default executor had none left for the
    workers that share it."""
    state = request.app.state
    running: dict[str, asyncio.Future[Any]] | None = getattr(state, "health_checks", None)
    if running is None:
        running = state.health_checks = {}
    check = running.get(name)
    if check is None or check.done() or check.get_loop() is not asyncio.get_running_loop():
        check = asyncio.ensure_future(asyncio.to_thread(fn))
        # Retrieved here so that a check nobody waits for any more does not log "never retrieved".
        check.add_done_callback(lambda f: f.cancelled() or f.exception())
        running[name] = check
    try:
        result: T = await asyncio.wait_for(asyncio.shield(check), CHECK_TIMEOUT_S)
    except TimeoutError:
        raise CheckTimedOut(f"no answer within {CHECK_TIMEOUT_S:g} s") from None
    return result


def _why(exc: BaseException) -> str:
    """Why a check failed: the driver's error's type (StoreUnavailable wraps it), or the timeout."""
    if isinstance(exc, CheckTimedOut):
        return str(exc)
    return type(exc.__cause__ or exc).__name__


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, ctx: CtxDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        applied = await _bounded(request, "schema", lambda: _applied(ctx.store))
        checks["database"] = "ok"
        checks["schema"] = "ok" if set(applied) == set(current_heads()) else "not at this code's revision"
    except Exception as exc:
        checks["database"] = f"down: {_why(exc)}"
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        checks["bus"] = "not running in this process"
    else:
        try:
            checks["bus"] = "ok" if await asyncio.wait_for(runtime.bus.ping(), CHECK_TIMEOUT_S) else "down"
        except TimeoutError:
            checks["bus"] = f"down: no answer within {CHECK_TIMEOUT_S:g} s"
        except Exception as exc:
            checks["bus"] = f"down: {type(exc).__name__}"
    ready = (
        checks["database"] == "ok"
        and checks.get("schema") == "ok"
        and checks["bus"] in ("ok", "not running in this process")
    )
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
    )


def _applied(store: Store) -> tuple[str, ...]:
    return store.read(lambda s: applied_revisions(s.connection()))


def _gauges(session: Session) -> None:
    OUTBOX_PENDING.set(
        session.execute(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
        ).scalar_one()
    )
    DEAD_LETTERS.set(
        session.execute(
            select(func.count()).select_from(DeadLetter).where(DeadLetter.replayed_at.is_(None))
        ).scalar_one()
    )
    AUDIT_ENTRIES.set(session.execute(select(AuditHead.seq).where(AuditHead.id == 1)).scalar_one())
    # What an operator alerts on: messages owed to a hospital that are not going out, and alerts
    # nobody has acknowledged. Series that fell to nothing are dropped, not left at their last value.
    outbound = session.execute(
        select(Hl7v2Outbound.partner, Hl7v2Outbound.status, func.count())
        .where(Hl7v2Outbound.status.in_(("pending", "dead", "quarantined")))
        .group_by(Hl7v2Outbound.partner, Hl7v2Outbound.status)
    ).all()
    HL7V2_OUTBOUND.clear()
    for partner, status, count in outbound:
        HL7V2_OUTBOUND.labels(partner, status).set(count)
    open_alerts = dict(
        session.execute(
            select(Alert.severity, func.count()).where(Alert.acknowledged_at.is_(None)).group_by(Alert.severity)
        ).all()
    )
    for severity in sorted({"info", "warning", "critical", *open_alerts}):
        ALERTS_OPEN.labels(severity).set(open_alerts.get(severity, 0))


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, ctx: CtxDep) -> Response:
    try:
        await _bounded(request, "gauges", lambda: ctx.store.read(_gauges))
    except Exception as exc:  # metrics must not fail because the database is briefly unavailable
        log.warning("metrics: store gauges unavailable: %s", _why(exc))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
