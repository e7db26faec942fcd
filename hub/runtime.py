"""The composition root: wires settings, store, partners, consumers, bus and relay together.

This is the one hub module that may import adapters (it assembles the application); everything
else in ``hub/`` stays free of partner dialects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from hub.alerts.tasks import CONSUMERS as ALERT_CONSUMERS
from hub.context import HubContext, build_context
from hub.messaging.bus import Bus, MemoryBus
from hub.messaging.consumers import Consumer, ConsumerRunner
from hub.messaging.relay import OutboxRelay
from hub.settings import Settings


def all_consumers() -> list[Consumer]:
    """Every consumer the hub runs. Adapters' outbound consumers join this list as they land."""
    from adapters.fhir.notify import CONSUMERS as FHIR_NOTIFY_CONSUMERS

    return [*ALERT_CONSUMERS, *FHIR_NOTIFY_CONSUMERS]


Worker = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def background_workers(ctx: HubContext) -> list[Worker]:
    """Long-running outbound workers started with the runtime (each stops when the event is set)."""
    from adapters.fhir.notify import DeliveryWorker

    return [DeliveryWorker(ctx.store, ctx.partners).run]


def make_bus(ctx: HubContext, runner: ConsumerRunner, *, consume: bool = True) -> Bus:
    url = ctx.settings.bus_url
    if url.startswith("memory://"):
        return MemoryBus(runner)
    if url.startswith(("amqp://", "amqps://")):
        from hub.messaging.amqp import AmqpBus

        return AmqpBus(
            url, runner, partitions=ctx.settings.bus_partitions, consume=consume, prefix=ctx.settings.bus_prefix
        )
    raise ValueError(f"unsupported bus URL {url.split(':', 1)[0]}://")


@dataclass
class Runtime:
    ctx: HubContext
    runner: ConsumerRunner
    bus: Bus
    relay: OutboxRelay
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, *, run_relay: bool = True, run_workers: bool | None = None) -> None:
        self.ctx.store.start_committer()
        await self.bus.start()
        if run_relay:
            self._tasks.append(asyncio.create_task(self.relay.run(self._stop)))
        if run_relay if run_workers is None else run_workers:
            for worker in background_workers(self.ctx):
                self._tasks.append(asyncio.create_task(worker(self._stop)))

    async def stop(self) -> None:
        self._stop.set()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(t, timeout=10)
        await self.bus.close()


def build_runtime(settings: Settings, *, ctx: HubContext | None = None, consume: bool = True) -> Runtime:
    ctx = ctx or build_context(settings)
    runner = ConsumerRunner(
        ctx.store,
        all_consumers(),
        max_attempts=settings.consumer_max_attempts,
        backoff_base_s=settings.consumer_backoff_base_s,
        backoff_max_s=settings.consumer_backoff_max_s,
    )
    bus = make_bus(ctx, runner, consume=consume)
    relay = OutboxRelay(ctx.store, bus, batch=settings.relay_batch, poll_s=settings.relay_poll_s)
    return Runtime(ctx, runner, bus, relay)
