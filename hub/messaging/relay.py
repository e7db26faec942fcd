"""The outbox relay: publishes committed events in commit order and marks them published.

Only one relay per database publishes at a time (a lease row, renewed while it works), so events
of one order leave in the order they were written. A publish that is not confirmed stays
unpublished and is retried; consumers are idempotent, so a publish confirmed but not yet marked
(a crash in between) is harmless when it is sent again.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hub import canonical
from hub.db import leases
from hub.db.models import OutboxEvent
from hub.db.uow import Store, Work
from hub.events import Envelope
from hub.messaging.bus import Bus

log = logging.getLogger(__name__)
LEASE_NAME = "outbox-relay"


def envelope_of(row: OutboxEvent) -> Envelope:
    """The bus message for one outbox row."""
    return Envelope(
        event_id=row.event_id,
        type=row.event_type,
        aggregate_id=row.aggregate_id,
        partition=row.partition,
        occurred_at=row.occurred_at,
        data=canonical.loads(row.payload),
    )


class OutboxRelay:
    def __init__(
        self, store: Store, bus: Bus, *, batch: int = 500, poll_s: float = 0.05, lease_s: float = 15.0
    ) -> None:
        self.store = store
        self.bus = bus
        self.batch = batch
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.holder = leases.holder_name(self)
        self.published = 0

    async def acquire_lease(self) -> bool:
        return bool(await self.store.run_async(leases.take(LEASE_NAME, self.holder, self.lease_s), actor="relay"))

    async def release_lease(self) -> None:
        await self.store.run_async(leases.release(self.holder, LEASE_NAME), actor="relay")

    def _pending(self) -> list[Envelope]:
        def read(session: Session) -> list[Envelope]:
            rows = session.execute(
                select(OutboxEvent).where(OutboxEvent.published_at.is_(None)).order_by(OutboxEvent.id).limit(self.batch)
            ).scalars()
            return [envelope_of(r) for r in rows]

        return self.store.read(read)

    async def drain_once(self, *, budget_s: float | None = None) -> int:
        """Publish up to one batch. Returns how many were confirmed and marked.

        ``budget_s``: stop starting publishes after this long (what is confirmed is marked; the
        rest waits for the next call). The running relay passes a quarter of its lease: with a
        confirm taking up to 10 s, the batch ends before the lease could expire and another process
        take it over and publish the same events."""
        pending = await asyncio.to_thread(self._pending)
        if not pending:
            return 0
        confirmed: list[str] = []
        stalled = False
        clock = asyncio.get_running_loop().time
        started = clock()
        try:
            for envelope in pending:
                if budget_s is not None and confirmed and clock() - started > budget_s:
                    break
                await self.bus.publish(envelope)
                confirmed.append(envelope.event_id)
        except Exception as exc:
            stalled = True
            log.warning(
                "relay: publish failed after %d of %d events: %s", len(confirmed), len(pending), type(exc).__name__
            )
        if confirmed:
            ids = list(confirmed)

            def mark(work: Work) -> None:
                work.session.execute(
                    update(OutboxEvent).where(OutboxEvent.event_id.in_(ids)).values(published_at=work.now)
                )

            await self.store.run_async(mark, actor="relay")
            self.published += len(confirmed)
        if stalled:
            raise RelayStalled(f"{len(pending) - len(confirmed)} events not confirmed")
        return len(confirmed)

    async def drain(self, *, timeout_s: float = 60.0) -> int:
        """Publish until the outbox is empty (demo, tests, ``cgt-hub events drain``). Returns how
        many events this call published.

        It publishes only while it holds the relay lease, like the running relay: an operator
        draining next to a serving hub must not publish the same events at the same time (the
        order of one order's events would no longer be the commit order). While another relay
        holds the lease, this waits for that relay to empty the outbox instead."""
        total = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        held = False
        try:
            while True:
                held = await self.acquire_lease()
                try:
                    n = await self.drain_once(budget_s=self.lease_s / 4) if held else -1
                except RelayStalled:
                    n = -1
                if n == 0 or (n < 0 and not held and not await asyncio.to_thread(self._pending)):
                    return total
                total += max(n, 0)
                if n < 0:
                    if loop.time() > deadline:
                        raise RelayStalled(
                            "the outbox did not empty in time" + ("" if held else " (another relay holds the lease)")
                        )
                    await asyncio.sleep(0.5 if held else min(1.0, self.poll_s * 4))
        finally:
            if held:
                await self.release_lease()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self.poll_s
        while not stop.is_set():
            try:
                if not await self.acquire_lease():
                    await _wait(stop, self.lease_s / 3)
                    continue
                n = await self.drain_once(budget_s=self.lease_s / 4)
                backoff = self.poll_s
                if n == 0:
                    await _wait(stop, self.poll_s)
            except Exception as exc:
                log.warning("relay: %s; retrying in %.1fs", type(exc).__name__, backoff)
                await _wait(stop, backoff)
                backoff = min(10.0, backoff * 2)
        try:
            await self.release_lease()
        except Exception:
            log.warning("relay: could not release its lease (it will expire)")


class RelayStalled(RuntimeError):
    pass


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return
