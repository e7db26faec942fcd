"""Refuse input no database can store, before any route sees it.

A NUL character (``%00`` in a URL, ``\\u0000`` in JSON) cannot be stored in PostgreSQL text or
JSONB; left alone it reached the driver and answered 500 (schemathesis found it in ``GET /alerts``).
The path and the query string are checked here for every route, with an answer naming the
parameter; request bodies are checked where they are parsed (FHIR) and, as a backstop, a database
``DataError`` is rendered as the partner's mistake (``hub.api.app``).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from hub.api.outcomes import error_response
from hub.errors import HubError, Issue


class Unstorable(HubError):
    def __init__(self, where: str) -> None:
        super().__init__(
            f"{where} contains a NUL character, which cannot be stored",
            [Issue("NUL (U+0000) is not allowed", where)],
            status=400,
            fhir_code="invalid",
        )


def _first_nul(scope: Scope) -> str | None:
    if "\x00" in scope.get("path", ""):  # the server has percent-decoded it
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
                await error_response(scope.get("path", ""), Unstorable(where))(scope, receive, send)
                return
        await self.app(scope, receive, send)
