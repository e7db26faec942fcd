"""Dependency aliases: routes read like their contract."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from hub.context import HubContext
from hub.errors import AuthenticationFailed


def app_context(request: Request) -> HubContext:
    """The hub context of the app serving ``request`` (for routes that skip dependency injection)."""
    ctx: HubContext = request.app.state.ctx
    return ctx


# Dependencies that do no I/O are ``async def``: FastAPI would run a plain ``def`` in its thread
# pool, a thread hop per request (measured: a sixth of a webhook's time under load).
async def get_ctx(request: Request) -> HubContext:
    return app_context(request)


CtxDep = Annotated[HubContext, Depends(get_ctx)]


def read_session(ctx: CtxDep) -> Iterator[Session]:
    with ctx.store.reading() as session:
        yield session


ReadSession = Annotated[Session, Depends(read_session)]


async def operator(request: Request, ctx: CtxDep) -> str:
    """Hub operators authenticate with the operator bearer token (partners get SMART tokens)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected = ctx.settings.operator_token.get_secret_value()
    if scheme.lower() != "bearer" or not token or not hmac.compare_digest(token.encode(), expected.encode()):
        raise AuthenticationFailed("a valid bearer token is required")
    return "operator"


OperatorDep = Annotated[str, Depends(operator)]
