"""The HL7 v2 adapter as a long-running service of ``cgt-hub serve``: the MLLP listener and the
outbound sender, started and stopped with the runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field

from adapters.hl7v2.listener import MllpListener
from adapters.hl7v2.outbound import OutboundSender, SenderSettings
from hub.context import HubContext

log = logging.getLogger(__name__)


def sender_for(ctx: HubContext) -> OutboundSender:
    s = ctx.settings
    return OutboundSender(
        ctx.store,
        ctx.partners,
        SenderSettings(
            max_attempts=s.hl7v2_outbound_max_attempts,
            backoff_base_s=s.hl7v2_outbound_backoff_base_s,
            backoff_max_s=s.hl7v2_outbound_backoff_max_s,
            ack_timeout_s=s.hl7v2_ack_timeout_s,
            poll_s=s.hl7v2_outbound_poll_s,
        ),
    )


def listener_for(ctx: HubContext, sock: socket.socket | None = None) -> MllpListener:
    s = ctx.settings
    return MllpListener(
        ctx,
        host=s.mllp_host,
        port=s.mllp_port,
        tls=s.mllp_tls,
        max_frame=s.mllp_max_frame_bytes,
        idle_timeout_s=s.mllp_idle_timeout_s,
        sock=sock,
    )


@dataclass
class Hl7v2Service:
    ctx: HubContext
    listener: MllpListener | None = None
    sender: OutboundSender | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @classmethod
    def create(cls, ctx: HubContext, *, edge: bool = False, sock: socket.socket | None = None) -> Hl7v2Service:
        """``edge``: a listener only (the outbound sender runs in `serve`'s first worker)."""
        listener = listener_for(ctx, sock) if ctx.settings.mllp_enabled else None
        return cls(ctx, listener, None if edge else sender_for(ctx))

    async def start(self) -> None:
        if self.listener is not None:
            await self.listener.start()
        if self.sender is not None:
            self._task = asyncio.create_task(self.sender.run(self._stop))

    def stop_accepting(self) -> None:
        if self.listener is not None:
            self.listener.stop_accepting()

    async def stop(self) -> None:
        self._stop.set()
        if self.listener is not None:
            await self.listener.stop()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, timeout=10)


def services(ctx: HubContext, *, edge: bool = False, mllp_socket: socket.socket | None = None) -> list[Hl7v2Service]:
    return [Hl7v2Service.create(ctx, edge=edge, sock=mllp_socket)]
