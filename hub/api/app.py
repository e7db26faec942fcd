"""The FastAPI application and its single error handler family."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from hub import __version__, canonical, heap
from hub.api import fhir, health, smart
from hub.api.auth import TokenService
from hub.api.direct import DirectRoutes, marked
from hub.api.guard import RefuseNul
from hub.api.idempotency import InFlight
from hub.api.metrics import ObserveMiddleware
from hub.api.outcomes import FHIR_JSON_UTF8, error_response, operation_outcome
from hub.context import HubContext
from hub.errors import HubError, Issue

log = logging.getLogger("hub.http")


def _is_fhir(request: Request) -> bool:
    return request.url.path.startswith("/fhir")


def _render(request: Request, error: HubError) -> Response:
    return error_response(request.url.path, error)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HubError)
    async def _hub_error(request: Request, exc: HubError) -> Response:
        return _render(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _malformed(request: Request, exc: RequestValidationError) -> Response:
        issues = [Issue(str(e.get("msg")), ".".join(str(p) for p in e.get("loc", ()))) for e in exc.errors()]
        error = HubError("malformed request", issues, status=422, fhir_code="structure", hl7_code="100")
        return _render(request, error)

    @app.exception_handler(DataError)
    async def _unstorable(request: Request, exc: DataError) -> Response:
        # The database refused a value it was given (NUL in text, a number out of range): the
        # sender's input, not our crash. The statement and its values are not logged (PHI).
        log.warning("request refused by the database as unstorable data: %s", type(exc.orig).__name__)
        message = "a value in the request cannot be stored (for example a NUL character or a number out of range)"
        return _render(request, HubError(message, status=422, fhir_code="invalid"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported", 401: "login", 403: "forbidden"}.get(
            exc.status_code, "processing"
        )
        if _is_fhir(request):
            body = operation_outcome([Issue(str(exc.detail))], code)
            return Response(canonical.dumpb(body), status_code=exc.status_code, media_type=FHIR_JSON_UTF8)
        return JSONResponse(
            {"status": exc.status_code, "detail": exc.detail},
            status_code=exc.status_code,
            media_type="application/problem+json",
        )


def telemetry(enabled: bool) -> TelemetryConfig:
    """FastAPI's native OpenTelemetry settings (``CGTHUB_OTEL_ENABLED``). Its "logs" signal records
    exception messages, which may carry PHI: off always."""
    return {"tracing": enabled, "metrics": enabled, "logs": False}


def create_app(ctx: HubContext, runtime: Any = None, *, settle_heap: bool = False) -> FastAPI:
    """``settle_heap``: a long-running server (``cgt-hub serve``) freezes its start-up heap out of
    the garbage collector's full collections once started (see hub.heap); tests leave it off."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            await runtime.start()
        if settle_heap:
            heap.settle()
        try:
            yield
        finally:
            if runtime is not None:
                await runtime.stop()
            if settle_heap:
                heap.release()

    app = FastAPI(
        title="CGT Hub", version=__version__, lifespan=lifespan, telemetry=telemetry(ctx.settings.otel_enabled)
    )
    app.state.ctx = ctx
    app.state.runtime = runtime
    app.state.tokens = TokenService(ctx.settings, ctx.store, ctx.partners)
    app.state.inflight = InFlight()
    install_error_handlers(app)

    from hub.alerts.endpoints import router as alerts
    from hub.logistics.endpoints import router as logistics
    from hub.runtime import all_routers

    adapters = all_routers()
    # Innermost of the hub's middleware: marked partner endpoints skip the router (hub.api.direct).
    app.add_middleware(DirectRoutes, routes=marked(adapters), handlers=app.exception_handlers)
    app.add_middleware(RefuseNul)
    app.add_middleware(ObserveMiddleware)  # outermost: refused requests are counted too

    # Routes are matched in order: the adapters' partner-facing endpoints (courier webhooks, the
    # highest-rate traffic) come first, so they are not matched against every FHIR route first
    # (measured: route matching was ~10 % of a webhook's server time when they came last).
    for router in adapters:
        app.include_router(router)
    app.include_router(health.router)
    app.include_router(smart.router)  # before fhir: /fhir/.well-known/… is not a resource type
    app.include_router(fhir.router)
    app.include_router(alerts)
    app.include_router(logistics)
    return app
