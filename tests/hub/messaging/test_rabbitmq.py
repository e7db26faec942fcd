"""The RabbitMQ bus against the machine's broker: confirms, quorum queues, redelivery, restart."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest
from sqlalchemy import func, select

from hub.alerts.tasks import CONSUMERS as ALERTS
from hub.db.models import Alert, ConsumerHandled, OutboxEvent
from hub.db.uow import Store
from hub.events import AlertRaised, EventType
from hub.messaging.amqp import AmqpBus
from hub.messaging.consumers import Consumer, ConsumerRunner
from hub.messaging.relay import OutboxRelay, RelayStalled, envelope_of
from tests.conftest import unavailable

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def prefix(amqp_url: str) -> Iterator[str]:
    name = f"cgthubtest{uuid.uuid4().hex[:8]}"
    yield name

    async def cleanup() -> None:
        conn = await aio_pika.connect(amqp_url)
        ch = await conn.channel()
        for q in [f"{name}.alerts.p{k}" for k in range(4)] + [f"{name}.dead"]:
            try:
                await ch.queue_delete(q)
            except Exception:
                ch = await conn.channel()
        for ex in (f"{name}.events", f"{name}.dead"):
            try:
                await ch.exchange_delete(ex)
            except Exception:
                ch = await conn.channel()
        await conn.close()

    asyncio.run(cleanup())


def _emit(store: Store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        order = f"order-{i % 7}"
        store.run(
            lambda w, i=i, order=order: w.emit(
                EventType.ALERT_RAISED,
                order,
                AlertRaised(order_id=order, severity="info", kind="test", message=f"m{i}"),
            )
        )


def _count(store: Store, model: Any, *where: Any) -> int:
    return store.read(lambda s: s.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


async def _wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not reached in time")


def test_publish_with_confirms_and_consume_exactly_once(store: Store, amqp_url: str, prefix: str) -> None:
    async def go() -> None:
        runner = ConsumerRunner(store, [*ALERTS], backoff_base_s=0.01)
        bus = AmqpBus(amqp_url, runner, partitions=4, prefix=prefix)
        await bus.start()
        try:
            relay = OutboxRelay(store, bus)
            _emit(store, 50)
            assert await relay.drain() == 50
            await _wait_for(lambda: _count(store, Alert) == 50)
            # A second publish of the same events (a relay crash before marking) is absorbed.
            rows = await asyncio.to_thread(store.read, lambda s: s.scalars(select(OutboxEvent)).all())
            for r in rows[:10]:
                await bus.publish(envelope_of(r))
            await asyncio.sleep(1.0)
            assert _count(store, Alert) == 50
            assert _count(store, ConsumerHandled) == 50
        finally:
            await bus.close()

    asyncio.run(go())


def test_an_event_no_queue_takes_is_not_marked_published(store: Store, amqp_url: str, prefix: str) -> None:
    """Events stamped for 4 partitions, a bus declared with 2 (the setting lowered while a backlog
    waits): p2/p3 have no queue. The broker returned those messages but still confirmed them, and
    the relay marked them published: lost. They now stay in the outbox until a queue takes them."""

    async def go() -> tuple[int, int]:
        runner = ConsumerRunner(store, [*ALERTS], backoff_base_s=0.01)
        bus = AmqpBus(amqp_url, runner, partitions=2, prefix=prefix, consume=False)
        await bus.start()
        try:
            _emit(store, 14)  # order-0 … order-6, over the store's 4 partitions
            routable = await asyncio.to_thread(
                store.read,
                lambda s: s.execute(
                    select(func.count()).select_from(OutboxEvent).where(OutboxEvent.partition < 2)
                ).scalar_one(),
            )
            relay = OutboxRelay(store, bus)
            for _ in range(3):  # the relay stalls at the first event no queue takes: order is kept
                with contextlib.suppress(RelayStalled):
                    await relay.drain_once()
            return routable, _count(store, OutboxEvent, OutboxEvent.published_at.is_(None))
        finally:
            await bus.close()

    routable, unpublished = asyncio.run(go())
    assert 0 < routable < 14
    assert unpublished >= 14 - routable  # every unroutable event is still waiting


def test_a_store_outage_does_not_reorder_one_orders_events(store: Store, amqp_url: str, prefix: str) -> None:
    """The store is down while the first of an order's events is dead-lettered: it was nacked and
    the consumer went on with the events prefetched after it, so it was handled last."""
    seen: list[str] = []

    class StoreDownOnce(ConsumerRunner):
        failed = False

        async def process(self, consumer: Consumer, envelope: Any) -> str:
            if envelope.data["message"] == "m0" and not StoreDownOnce.failed:
                StoreDownOnce.failed = True
                raise RuntimeError("store unavailable while dead-lettering")
            return await super().process(consumer, envelope)

    def record(work: Any, envelope: Any) -> None:
        seen.append(envelope.data["message"])

    async def go() -> None:
        runner = StoreDownOnce(store, [Consumer("alerts", ("alert.*",), record)], backoff_base_s=0.001)
        publisher = AmqpBus(amqp_url, runner, partitions=4, prefix=prefix, consume=False)
        await publisher.start()
        try:
            for i in range(5):  # one order: one partition, one sequence
                store.run(
                    lambda w, i=i: w.emit(
                        EventType.ALERT_RAISED,
                        "order-1",
                        AlertRaised(order_id="order-1", severity="info", kind="test", message=f"m{i}"),
                    )
                )
            assert await OutboxRelay(store, publisher).drain() == 5
        finally:
            await publisher.close()
        consumer = AmqpBus(amqp_url, runner, partitions=4, prefix=prefix)
        await consumer.start()
        try:
            await _wait_for(lambda: len(seen) == 5, timeout=30)
        finally:
            await consumer.close()

    asyncio.run(go())
    assert seen == ["m0", "m1", "m2", "m3", "m4"]


def test_what_the_broker_dead_letters_becomes_a_replayable_dead_letter(
    store: Store, amqp_url: str, prefix: str
) -> None:
    """After x-delivery-limit deliveries the broker moves a message to <prefix>.dead, a queue no
    one read: the event's effect for that consumer was lost. The keeper records it in dead_letter
    (under the consumer whose queue gave it up), where it is replayed like any other."""
    from hub.db.models import DeadLetter
    from hub.messaging.consumers import replay_dead_letter

    store.run(
        lambda w: w.emit(
            EventType.ALERT_RAISED,
            "order-9",
            AlertRaised(order_id="order-9", severity="info", kind="test", message="x"),
        )
    )
    row = store.read(lambda s: s.scalars(select(OutboxEvent)).one())
    envelope = envelope_of(row)

    async def go() -> None:
        runner = ConsumerRunner(store, [*ALERTS], backoff_base_s=0.01)
        bus = AmqpBus(amqp_url, runner, partitions=4, prefix=prefix)
        await bus.start()
        try:
            # As the broker dead-letters: the body, and an x-death header naming the queue.
            conn = await aio_pika.connect(amqp_url)
            channel = await conn.channel()
            dead = await channel.get_exchange(f"{prefix}.dead")
            headers = {"x-death": [{"queue": f"{prefix}.alerts.p1", "reason": "delivery_limit", "count": 20}]}
            await dead.publish(
                aio_pika.Message(
                    body=envelope.model_dump_json().encode(), message_id=envelope.event_id, headers=headers
                ),
                routing_key="",
            )
            await conn.close()
            await _wait_for(lambda: _count(store, DeadLetter) == 1, timeout=30)
        finally:
            await bus.close()

    asyncio.run(go())
    kept = store.read(lambda s: s.scalars(select(DeadLetter)).one())
    assert (kept.consumer, kept.event_id, kept.attempts) == ("alerts", envelope.event_id, 20)
    assert "delivery_limit" in kept.last_error
    assert replay_dead_letter(store, [*ALERTS], kept.id, actor="test") == "handled"
    assert _count(store, Alert) == 1


def _restart_rabbitmq() -> None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        unavailable("rabbitmqctl", "not installed")
        return
    subprocess.run([ctl, "stop_app"], check=True, capture_output=True, timeout=120)
    time.sleep(1.0)
    subprocess.run([ctl, "start_app"], check=True, capture_output=True, timeout=120)
    subprocess.run([ctl, "await_startup"], check=False, capture_output=True, timeout=120)


@pytest.mark.slow
def test_restart_rabbitmq_while_events_flow(store: Store, amqp_url: str, prefix: str) -> None:
    """Nothing confirmed is lost, and the outbox drains after the broker comes back."""
    total = 300

    async def go() -> None:
        runner = ConsumerRunner(store, [*ALERTS], backoff_base_s=0.05)
        bus = AmqpBus(amqp_url, runner, partitions=4, prefix=prefix, connect_timeout_s=120)
        await bus.start()
        relay = OutboxRelay(store, bus, poll_s=0.01)
        stop = asyncio.Event()
        relay_task = asyncio.create_task(relay.run(stop))
        producer = threading.Thread(target=lambda: _emit(store, total), daemon=True)
        producer.start()
        await _wait_for(lambda: _count(store, OutboxEvent, OutboxEvent.published_at.is_not(None)) >= 40)
        await asyncio.to_thread(_restart_rabbitmq)
        await asyncio.to_thread(producer.join)
        await _wait_for(lambda: _count(store, OutboxEvent, OutboxEvent.published_at.is_(None)) == 0, timeout=180)
        await _wait_for(lambda: _count(store, Alert) == total, timeout=180)
        stop.set()
        await relay_task
        await bus.close()

    asyncio.run(go())
    assert _count(store, ConsumerHandled) == total
    messages = store.read(lambda s: sorted(s.scalars(select(Alert.message)).all()))
    assert messages == sorted(f"m{i}" for i in range(total))
