"""The direct lane refuses endpoints whose parameters FastAPI would have to resolve."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, Depends, Request, Response

from hub.api.direct import direct, eligible, marked


def _route(router: APIRouter) -> object:
    (route,) = marked([router])
    return route


def test_only_path_parameters_and_the_request_are_allowed() -> None:
    ok, query, dependency, sync = APIRouter(), APIRouter(), APIRouter(), APIRouter()

    @ok.post("/x/{partner}")
    @direct
    async def fine(partner: str, request: Request) -> Response:
        return Response()

    @query.post("/x/{partner}")
    @direct
    async def with_query(partner: str, request: Request, limit: int = 10) -> Response:
        return Response()

    @dependency.post("/x/{partner}", dependencies=[Depends(lambda: None)])
    @direct
    async def with_dependency(partner: str, request: Request) -> Response:
        return Response()

    @sync.post("/x/{partner}")
    @direct
    def blocking(partner: str, request: Request) -> Response:
        return Response()

    typed = APIRouter()

    @typed.post("/x/{number}")
    @direct
    async def with_int(number: int, request: Request) -> Response:
        return Response()

    eligible(_route(ok))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="number"):
        eligible(_route(typed))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="limit"):
        eligible(_route(query))  # type: ignore[arg-type]
    for router in (dependency, sync):
        with pytest.raises(TypeError, match="direct lane"):
            eligible(_route(router))  # type: ignore[arg-type]
    assert marked([APIRouter()]) == []


def test_a_router_with_dependencies_cannot_lend_its_routes_to_the_lane() -> None:
    guarded = APIRouter(dependencies=[Depends(lambda: None)])

    @guarded.post("/x/{partner}")
    @direct
    async def endpoint(partner: str, request: Request) -> Response:
        return Response()

    with pytest.raises(TypeError, match="dependencies"):
        marked([guarded])
