"""The composition root: wires settings, store, partners, consumers, bus and relay together.

This is the one hub module that may import adapters (it assembles the application); everything
else in ``hub/`` stays free of partner dialects.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hub.alerts.tasks import CONSUMERS as ALERT_CONSUMERS
from hub.context import HubContext, build_context
from hub.messaging.bus import Bus, MemoryBus
from hub.messaging.consumers import Consumer, ConsumerRunner
from hub.messaging.relay import OutboxRelay
from hub.settings import Settings


def all_consumers(ctx: HubContext | None = None) -> list[Consumer]:
    """Every consumer the hub runs. Adapters' consumers that need the partner directory or settings
    join only when a context is given."""
    from adapters.fhir.notify import CONSUMERS as FHIR_NOTIFY_CONSUMERS

    consumers = [*ALERT_CONSUMERS, *FHIR_NOTIFY_CONSUMERS]
    if ctx is not None:
        from adapters.hl7v2.outbound import consumers as hl7v2_consumers

        consumers += logistics_consumers(ctx)
        consumers += hl7v2_consumers(ctx)
    return consumers


def logistics_consumers(ctx: HubContext) -> list[Consumer]:
    from adapters.couriers.consumer import courier_consumer
    from hub.logistics.policy import Policy
    from hub.logistics.tasks import pending_stages

    policy = Policy.from_settings(ctx.settings)
    return [courier_consumer(ctx.partners, ctx.settings.mappings_dir, policy), pending_stages(ctx.partners)]


def all_routers() -> list[Any]:
    """Adapters' HTTP routes (the API includes them; hub/api never imports adapters itself)."""
    from adapters.couriers.endpoints import router as couriers

    return [couriers]


def logistics_ports(ctx: HubContext, overrides: dict[str, str] | None = None) -> Any:
    """Booking and customs clients from the partner profiles (``overrides``: partner id -> base URL,
    used by the demo and tests to point a partner at a local service)."""
    from adapters.couriers.booking import booking_client
    from adapters.customs.client import Ics2CustomsClient
    from adapters.registry import SoapCustoms
    from hub.logistics.ports import BookingClient, CustomsClient
    from hub.logistics.worker import Ports

    urls = overrides or {}
    customs: dict[str, CustomsClient | None] = {}
    bookings: dict[str, BookingClient | None] = {}

    def book(partner_id: str) -> BookingClient | None:
        # One client per courier for the runtime's life: UPS's OAuth token is reused until it expires.
        if partner_id not in bookings:
            bookings[partner_id] = booking_client(ctx.partners, partner_id, base_url=urls.get(partner_id))
        return bookings[partner_id]

    def soap(partner_id: str) -> CustomsClient | None:
        if partner_id not in customs:
            profile = ctx.partners.get(partner_id)
            channels = [
                c for c in (profile.channels_of("soap-customs") if profile else []) if isinstance(c, SoapCustoms)
            ]
            base = urls.get(partner_id)
            customs[partner_id] = (
                Ics2CustomsClient(
                    channels[0],
                    wsdl_dir=ctx.settings.wsdl_dir,
                    mappings_dir=ctx.settings.mappings_dir,
                    secrets=dict(profile.secrets) if profile else None,
                    endpoint=f"{base}/ENSLifecycleManagementBAS" if base else None,
                    status_endpoint=f"{base}/ENSConsultationDS" if base else None,
                )
                if channels
                else None
            )
        return customs[partner_id]

    return Ports(booking=book, customs=soap)


def logistics_background(ctx: HubContext, ports: Any = None) -> Callable[[asyncio.Event], Awaitable[None]]:
    from hub.logistics.policy import Policy
    from hub.logistics.worker import OutboundDispatcher

    dispatcher = OutboundDispatcher(
        ctx.store, ctx.partners, ports or logistics_ports(ctx), Policy.from_settings(ctx.settings)
    )
    settings = ctx.settings.logistics

    def run(stop: asyncio.Event) -> Awaitable[None]:
        return dispatcher.run(stop, poll_s=settings.outbound_poll_s, sweep_s=settings.sweep_s)

    return run


class Service(Protocol):
    """A long-running adapter service (a listener, an outbound sender) started with the runtime."""

    async def start(self) -> None: ...

    def stop_accepting(self) -> None:
        """Shutdown has begun: take no new work (what is in flight finishes in ``stop``)."""

    async def stop(self) -> None: ...


def all_services(ctx: HubContext, *, edge: bool = False, mllp_socket: socket.socket | None = None) -> list[Service]:
    """Adapters' listeners and senders, for `cgt-hub serve` (``edge``: listeners only)."""
    from adapters.hl7v2.service import services as hl7v2_services

    return [*hl7v2_services(ctx, edge=edge, mllp_socket=mllp_socket)]


def background_workers(ctx: HubContext) -> list[Callable[[asyncio.Event], Awaitable[None]]]:
    """Long-running outbound workers started with the runtime (each stops when the event is set):
    FHIR subscription deliveries, the logistics dispatcher and sweeps."""
    from adapters.fhir.notify import DeliveryWorker

    return [DeliveryWorker(ctx.store, ctx.partners).run, logistics_background(ctx)]


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
    # Long-running outbound workers (subscription deliveries, logistics dispatcher and sweeps).
    background: list[Callable[[asyncio.Event], Awaitable[None]]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    # An edge process of `serve --workers`: listeners and the committer only; the relay, the
    # consumers and the outbound workers run in the first worker.
    edge: bool = False

    async def start(self, *, run_relay: bool = True, run_workers: bool | None = None) -> None:
        if self.edge:
            run_relay = run_workers = False
        self.ctx.store.start_committer()
        await self.bus.start()
        if run_relay:
            self._tasks.append(asyncio.create_task(self.relay.run(self._stop)))
        if run_relay if run_workers is None else run_workers:
            for loop in self.background:
                self._tasks.append(asyncio.create_task(loop(self._stop)))  # type: ignore[arg-type]
        for service in self.services:
            await service.start()

    def stop_accepting(self) -> None:
        """Shutdown has begun (`cgt-hub serve`, before it waits for HTTP requests in flight): the
        listeners take no new connection or message from now on."""
        for service in self.services:
            service.stop_accepting()

    async def stop(self) -> None:
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                await service.stop()
        self._stop.set()
        if self._tasks:
            # Together, not one after another: the stop is bounded by one timeout, not one per loop.
            done, late = await asyncio.wait(self._tasks, timeout=10)
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late, timeout=2)
            for t in done:
                if not t.cancelled():
                    t.exception()  # retrieved, as wait_for did: asyncio would log it as never retrieved
        await self.bus.close()


def build_runtime(
    settings: Settings,
    *,
    ctx: HubContext | None = None,
    consume: bool = True,
    services: bool = False,
    edge: bool = False,
    mllp_socket: socket.socket | None = None,
) -> Runtime:
    """``services=True`` also starts the adapters' listeners and senders (``cgt-hub serve``);
    ``edge=True`` builds a listeners-only process of ``serve --workers`` (see hub/serve.py)."""
    ctx = ctx or build_context(settings)
    runner = ConsumerRunner(
        ctx.store,
        all_consumers(ctx),
        max_attempts=settings.consumer_max_attempts,
        backoff_base_s=settings.consumer_backoff_base_s,
        backoff_max_s=settings.consumer_backoff_max_s,
    )
    bus = make_bus(ctx, runner, consume=consume and not edge)
    relay = OutboxRelay(ctx.store, bus, batch=settings.relay_batch, poll_s=settings.relay_poll_s)
    return Runtime(
        ctx,
        runner,
        bus,
        relay,
        background=[] if edge else background_workers(ctx),
        services=all_services(ctx, edge=edge, mllp_socket=mllp_socket) if services else [],
        edge=edge,
    )
