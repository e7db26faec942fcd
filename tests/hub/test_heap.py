"""The server's heap policy (hub.heap): the start-up heap is frozen out of full collections, and
nothing that was garbage at that moment is kept alive by the freeze."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from hub import heap
from hub.api.app import create_app
from tests.logistics_support import context


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector can free it


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual


def test_settle_freezes_the_survivors_and_collects_the_garbage_first() -> None:
    kept = _Node()
    dropped = weakref.ref(_Node())  # cyclic garbage, not yet collected
    frozen = heap.settle()
    # Frozen objects that other threads of the test session free meanwhile leave the count (it
    # went down by 12 once, in a clean-clone run), so it can only be lower than what was frozen.
    assert 0 < gc.get_freeze_count() <= frozen
    assert dropped() is None, "garbage present at start-up must be collected, not frozen"
    assert kept.me is kept


@pytest.mark.parametrize("settle", [True, False])
def test_the_served_app_settles_its_heap_once_started(db_url: str, settle: bool) -> None:
    ctx = context(db_url)
    try:
        with TestClient(create_app(ctx, settle_heap=settle)) as client:
            assert client.get("/healthz").status_code == 200
            assert (gc.get_freeze_count() > 0) is settle
        assert gc.get_freeze_count() == 0  # released when the server stops
    finally:
        ctx.store.dispose()
