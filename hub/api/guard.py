"""Refuse input no database can store, before any route sees it.

A NUL character (``%00`` in a URL, ``\\u0000`` in JSON) cannot be stored in PostgreSQL text or
JSONB; left alone it reached the driver and answered 500 (schemathesis found it in ``GET /alerts``).
The path and the query string are checked here for every route, with an answer naming the
parameter; request bodies are checked where they are parsed (FHIR) and, as a backstop, a database
``DataError`` is rendered as the partner's mistake (``install_data_error_handler``).
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, unquote

from fastapi import FastAPI, Request, Response
from sqlalchemy.exc import DataError
from starlette.types import ASGIApp, Receive, Scope, Send

from hub import canonical
from hub.api.outcomes import operation_outcome, problem_for
from hub.errors import HubError, Issue

log = logging.getLogger("hub.http")
FHIR_JSON = "application/fhir+json"


class Unstorable(HubError):
    def __init__(self, where: str) -> None:
        super().__init__(
            f"{where} contains a NUL character, which cannot be stored",
            [Issue("NUL (U+0000) is not allowed", where)],
            status=400,
            fhir_code="invalid",
        )


def _render(path: str, error: HubError) -> tuple[bytes, str]:
    if path.startswith("/fhir"):
        return canonical.dumpb(operation_outcome(error.issues, error.fhir_code)), FHIR_JSON
    return canonical.dumpb(problem_for(error)), "application/problem+json"


def _first_nul(scope: Scope) -> str | None:
    if "\x00" in scope.get("path", "") or "\x00" in unquote(scope.get("raw_path", b"").decode("latin-1")):
        return "path"
    query = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in key or "\x00" in value:
                return f"query parameter {key.replace(chr(0), '?')[:64]}"
        return "query string"
    return None


class RefuseNul:
    """Plain ASGI middleware (no per-request task or body buffering)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            where = _first_nul(scope)
            if where is not None:
                body, media = _render(scope.get("path", ""), Unstorable(where))
                response = Response(body, status_code=400, media_type=media)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_data_error_handler(app: FastAPI) -> None:
    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> Response:
        # The database refused a value it was given (NUL in text, a number out of range): the
        # sender's input, not our crash. The statement and its values are not logged (PHI).
        log.warning("request refused by the database as unstorable data: %s", type(exc.orig).__name__)
        error = HubError(
            "a value in the request cannot be stored (for example a NUL character or a number out of range)",
            status=422,
            fhir_code="invalid",
        )
        body, media = _render(request.url.path, error)
        return Response(body, status_code=422, media_type=media)


def refuse_unstorable(app: FastAPI) -> None:
    app.add_middleware(RefuseNul)
    install_data_error_handler(app)
