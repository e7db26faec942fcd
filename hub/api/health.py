"""Liveness, readiness (database and bus) and metrics."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.api.deps import CtxDep
from hub.api.metrics import AUDIT_ENTRIES, DEAD_LETTERS, OUTBOX_PENDING, REGISTRY
from hub.db.migrate import applied_revisions, current_heads
from hub.db.models import AuditHead, DeadLetter, OutboxEvent

router = APIRouter()
log = logging.getLogger(__name__)


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, ctx: CtxDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        applied = await asyncio.to_thread(ctx.store.read, lambda s: applied_revisions(s.connection()))
        checks["database"] = "ok"
        checks["schema"] = "ok" if set(applied) == set(current_heads()) else "not at this code's revision"
    except Exception as exc:
        checks["database"] = f"down: {type(exc).__name__}"
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        checks["bus"] = "not running in this process"
    else:
        try:
            checks["bus"] = "ok" if await runtime.bus.ping() else "down"
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


@router.get("/metrics", include_in_schema=False)
async def metrics(ctx: CtxDep) -> Response:
    try:
        await asyncio.to_thread(ctx.store.read, _gauges)
    except Exception as exc:  # metrics must not fail because the database is briefly unavailable
        log.warning("metrics: store gauges unavailable: %s", type(exc).__name__)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
