"""Fixtures for the HL7 v2 adapter: a hub context on both back ends and a real MLLP listener
running in a background event loop (so tests can use blocking sockets and real clients)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest

from adapters.hl7v2.framer import Deframer, frame
from adapters.hl7v2.listener import MllpListener
from hub.context import HubContext
from hub.db.uow import Store
from hub.partners.loader import PartnerDirectory
from hub.settings import Settings
from tests.conftest import CORPORA, REPO

T = TypeVar("T")


class Loop:
    """An asyncio loop in a thread: run coroutines from sync tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


def make_ctx(store: Store, partners: PartnerDirectory, **settings: Any) -> HubContext:
    s = Settings(
        database_url=store.database_url,
        profiles_dir=REPO / "partner-profiles",
        mappings_dir=REPO / "mappings",
        **settings,
    )
    return HubContext(settings=s, store=store, partners=partners)


@pytest.fixture
def ctx(store: Store, partners: PartnerDirectory) -> HubContext:
    return make_ctx(store, partners)


@pytest.fixture
def listener(ctx: HubContext, loop: Loop) -> Iterator[MllpListener]:
    lst = MllpListener(ctx, host="127.0.0.1", port=0, idle_timeout_s=30)
    loop.run(lst.start())
    yield lst
    loop.run(lst.stop())


class Sender:
    """A blocking MLLP client for tests: send a frame, read the frames that answer it."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.deframer = Deframer()
        self.pending: list[bytes] = []

    def send(self, payload: bytes, *, expect: int = 1) -> list[bytes]:
        self.sock.sendall(frame(payload))
        return self.read(expect)

    def read(self, count: int) -> list[bytes]:
        while len(self.pending) < count:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the hub")
            self.pending += self.deframer.feed(data)
        out, self.pending = self.pending[:count], self.pending[count:]
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sender(listener: MllpListener) -> Iterator[Sender]:
    s = Sender(listener.port)
    yield s
    s.close()


def in_job(store: Store, fn: Callable[..., T]) -> T:
    return store.run(fn, actor="test")


MAPPINGS = REPO / "mappings"
PROFILES = REPO / "partner-profiles"
CORPUS = CORPORA / "hl7v2"
__all__ = ["CORPUS", "MAPPINGS", "PROFILES", "Path"]
