"""A direct lane for the highest-rate partner endpoints (courier webhooks).

FastAPI's router walks its middleware and route layers for every request: the exception and
exit-stack middleware, the router and each included router, the route's request/response wrapper
and the dependency solver. For a courier webhook that plumbing took ~22 % of the server's GIL
time against ~14 % for the endpoint itself (py-spy ``--gil``, bench/courier_webhooks.py, 2026-12-03).
The routes named here are still declared on their FastAPI router — the OpenAPI document, the
CapabilityStatement and the router's 405 for other methods are unchanged — but a request that
matches one of them exactly is dispatched here, inside the hub's own middleware (metrics and the
NUL guard still see it), straight to the endpoint function.

The endpoint's errors are rendered by the application's own exception handlers, looked up as
Starlette does (by the exception's class hierarchy); an exception without a handler propagates to
the server-error middleware as it would have through the router. Only endpoints whose parameters
are path parameters and the ``Request`` can take this lane (checked when the app is built), so a
dependency added later cannot be skipped silently.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, get_type_hints

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Handler = Callable[[Request, Any], Response | Awaitable[Response]]
E = TypeVar("E", bound=Callable[..., Awaitable[Response]])


def direct(endpoint: E) -> E:
    """Mark an endpoint for the direct lane (the app collects marked routes when it is built)."""
    endpoint.direct_lane = True  # type: ignore[attr-defined]
    return endpoint


def marked(routers: Iterable[Any]) -> list[APIRoute]:
    routes = []
    for router in routers:
        for r in router.routes:
            if isinstance(r, APIRoute) and getattr(r.endpoint, "direct_lane", False):
                if router.dependencies:
                    raise TypeError(f"{r.path}: its router's dependencies would be skipped by the direct lane")
                routes.append(r)
    return routes


def eligible(route: APIRoute) -> None:
    """Refuse a route whose endpoint needs anything FastAPI would have to resolve or enforce: a
    parameter other than ``request`` and ``str`` path parameters, a dependency, a body limit of its
    own, a synchronous endpoint."""
    params = set(route.param_convertors)
    hints = get_type_hints(route.endpoint)
    for name in inspect.signature(route.endpoint).parameters:
        if name == "request" or (name in params and hints.get(name) is str):
            continue
        raise TypeError(f"{route.path}: parameter {name!r} needs FastAPI's resolution; it cannot take the direct lane")
    if route.dependencies or route.dependant.dependencies or not inspect.iscoroutinefunction(route.endpoint):
        raise TypeError(f"{route.path}: only async endpoints without dependencies can take the direct lane")
    if getattr(route, "max_body_size", None) is not None:
        raise TypeError(f"{route.path}: a route body limit is enforced by FastAPI's router, not the direct lane")


class DirectRoutes:
    """Plain ASGI middleware that serves ``routes`` itself and passes everything else on."""

    def __init__(self, app: ASGIApp, routes: Iterable[APIRoute], handlers: Mapping[Any, Handler]) -> None:
        self.app = app
        self.routes = list(routes)
        for route in self.routes:
            eligible(route)
        # As Starlette's ExceptionMiddleware: handlers by exception class; a handler for Exception
        # (or 500) belongs to the server-error middleware outside. Handlers keyed by a status code
        # serve HTTPException, which these endpoints do not raise (they raise HubError). FastAPI's
        # tracing (CGTHUB_OTEL_ENABLED) names the route in its router, so these spans carry no
        # http.route; the hub's own metrics do (scope["route"] below).
        self.handlers = {k: v for k, v in handlers.items() if isinstance(k, type) and k is not Exception}
        prefixes = {route.path_format.split("{", 1)[0] for route in self.routes}
        self.prefixes = tuple(prefixes)

    def _handler(self, exc: Exception) -> Handler | None:
        for cls in type(exc).__mro__:
            if cls in self.handlers:
                return self.handlers[cls]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path") and scope["path"].startswith(self.prefixes):
            method = scope["method"]
            for route in self.routes:
                match = route.path_regex.match(scope["path"])
                if match is None or (route.methods and method not in route.methods):
                    continue
                params = {k: route.param_convertors[k].convert(v) for k, v in match.groupdict().items()}
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = params
                request = Request(scope, receive, send)
                try:
                    response = await route.endpoint(request=request, **params)
                except Exception as exc:
                    handler = self._handler(exc)
                    if handler is None:
                        raise
                    rendered = handler(request, exc)
                    response = await rendered if inspect.isawaitable(rendered) else rendered
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
