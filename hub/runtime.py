"""The composition root: wires settings, store, partners, consumers, bus and relay together.

This is the one hub module that may import adapters (it assembles the application); everything
else in ``hub/`` stays free of partner dialects.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Protocol

from hub.alerts.tasks import CONSUMERS as ALERT_CONSUMERS
from hub.context import HubContext, build_context
from hub.messaging.bus import Bus, MemoryBus
from hub.messaging.consumers import Consumer, ConsumerRunner
from hub.messaging.relay import OutboxRelay
from hub.settings import Settings


def all_consumers(ctx: HubContext | None = None) -> list[Consumer]:
    """Every consumer the hub runs. Adapters' outbound consumers join this list as they land
    (those that need the partner directory or settings only when a context is given)."""
    consumers = [*ALERT_CONSUMERS]
    if ctx is not None:
        from adapters.hl7v2.outbound import consumers as hl7v2_consumers

        consumers += hl7v2_consumers(ctx)
    return consumers


class Service(Protocol):
    """A long-running adapter service (a listener, an outbound sender) started with the runtime."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def all_services(ctx: HubContext) -> list[Service]:
    """Adapters' listeners and senders, for `cgt-hub serve`."""
    from adapters.hl7v2.service import services as hl7v2_services

    return [*hl7v2_services(ctx)]


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
    services: list[Service] = field(default_factory=list)

    async def start(self, *, run_relay: bool = True) -> None:
        self.ctx.store.start_committer()
        await self.bus.start()
        if run_relay:
            self._tasks.append(asyncio.create_task(self.relay.run(self._stop)))
        for service in self.services:
            await service.start()

    async def stop(self) -> None:
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                await service.stop()
        self._stop.set()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(t, timeout=10)
        await self.bus.close()


def build_runtime(
    settings: Settings, *, ctx: HubContext | None = None, consume: bool = True, services: bool = False
) -> Runtime:
    """``services=True`` also starts the adapters' listeners and senders (``cgt-hub serve``)."""
    ctx = ctx or build_context(settings)
    runner = ConsumerRunner(
        ctx.store,
        all_consumers(ctx),
        max_attempts=settings.consumer_max_attempts,
        backoff_base_s=settings.consumer_backoff_base_s,
        backoff_max_s=settings.consumer_backoff_max_s,
    )
    bus = make_bus(ctx, runner, consume=consume)
    relay = OutboxRelay(ctx.store, bus, batch=settings.relay_batch, poll_s=settings.relay_poll_s)
    return Runtime(ctx, runner, bus, relay, services=all_services(ctx) if services else [])
