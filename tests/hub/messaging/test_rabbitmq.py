"""The RabbitMQ bus against the machine's broker: confirms, quorum queues, redelivery, restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from sqlalchemy import func, select
from yarl import URL

from hub.alerts.tasks import CONSUMERS as ALERTS
from hub.db.models import Alert, ConsumerHandled, DeadLetter, OutboxEvent
from hub.db.uow import Store
from hub.errors import StoreUnavailable
from hub.events import AlertRaised, Envelope, EventType
from hub.ids import uuid7
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


def test_a_store_outage_longer_than_the_delivery_limit_dead_letters_nothing(
    store: Store, amqp_url: str, prefix: str, monkeypatch: Any
) -> None:
    """Each store failure closed the consumer's channel (to keep the order's sequence) and it
    reconnected 0.2 s later: every return counts as a delivery on a quorum queue, so an outage of
    a minute ran out x-delivery-limit and the broker dead-lettered every event in flight (ORU^R01s
    and notifications never went out). Now a consumer that found the store down takes no delivery
    until the store answers: whatever the outage's length, each event is handled once, in order."""
    down = threading.Event()
    real_run_async = store.run_async

    async def run_async(job: Any, *, actor: str = "system") -> Any:  # the real store, switched off
        if down.is_set():
            raise StoreUnavailable()
        return await real_run_async(job, actor=actor)

    seen: list[tuple[str, str]] = []

    def record(work: Any, envelope: Any) -> None:
        seen.append((envelope.aggregate_id, envelope.data["message"]))

    async def go() -> None:
        # max_attempts=1: x-delivery-limit 4, which reconnecting every 0.2-1.6 s used up in 3 s.
        runner = ConsumerRunner(store, [Consumer("alerts", ("alert.*",), record)], max_attempts=1)
        publisher = AmqpBus(amqp_url, runner, partitions=4, prefix=prefix, consume=False)
        await publisher.start()
        try:
            _emit(store, 21)
            assert await OutboxRelay(store, publisher).drain() == 21
        finally:
            await publisher.close()
        monkeypatch.setattr(store, "run_async", run_async)
        down.set()
        bus = AmqpBus(amqp_url, runner, partitions=4, prefix=prefix, store_probe_max_s=1.0)
        await bus.start()
        try:
            await asyncio.sleep(6.0)  # longer than 4 deliveries at the fastest reconnect delays
            assert seen == []
            assert await bus.ping()  # waiting for the store is not a bus fault (/readyz reports the database)
            down.clear()
            await _wait_for(lambda: len(seen) >= 21, timeout=30)
            await asyncio.sleep(1.0)  # anything the broker dead-lettered reaches the keeper
        finally:
            await bus.close()

    asyncio.run(go())
    assert sorted(m for _, m in seen) == sorted(f"m{i}" for i in range(21))  # each exactly once
    for order in {o for o, _ in seen}:
        mine = [int(m[1:]) for o, m in seen if o == order]
        assert mine == sorted(mine), order
    assert (_count(store, ConsumerHandled), _count(store, DeadLetter)) == (21, 0)


class _Cable:
    """A TCP proxy to the broker that the test cuts like a network partition: the bus's
    connections die without any close() of its own, and new ones are refused until mended."""

    def __init__(self, upstream: URL) -> None:
        self.upstream = (upstream.host or "127.0.0.1", upstream.port or 5672)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._streams: set[asyncio.StreamWriter] = set()

    async def mend(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for stream in self._streams:
            stream.transport.abort()
        self._streams.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._streams |= {writer, up_writer}

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


def test_not_ready_while_the_bus_cannot_reach_the_broker(store: Store, amqp_url: str, prefix: str) -> None:
    """/readyz said "bus: ok" with no broker connection at all: ping() looked at is_closed, which
    aio-pika sets only on a local close(), and not at the consumers."""

    async def go() -> None:
        cable = _Cable(URL(amqp_url))
        await cable.mend()
        runner = ConsumerRunner(store, [*ALERTS], backoff_base_s=0.01)
        url = str(URL(amqp_url).with_port(cable.port))
        bus = AmqpBus(url, runner, partitions=4, prefix=prefix, connect_timeout_s=1.0, ping_timeout_s=1.0)
        await bus.start()
        try:
            await _wait_for_ping(bus, True)
            await cable.cut()
            await asyncio.sleep(0.5)
            assert not await bus.ping()
            await cable.mend()
            # Ready again without any publish: ping reconnects the publisher itself, and the
            # consumers are back (an event published now is handled).
            await _wait_for_ping(bus, True)
            _emit(store, 1)
            assert await OutboxRelay(store, bus).drain() == 1
            await _wait_for(lambda: _count(store, Alert) == 1, timeout=30)
        finally:
            await bus.close()
            await cable.cut()

    asyncio.run(go())


async def _wait_for_ping(bus: AmqpBus, expected: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while await bus.ping() != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"ping() never became {expected}")
        await asyncio.sleep(0.2)


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
            await _dead_letter_as_the_broker(amqp_url, prefix, envelope, f"{prefix}.alerts.p1")
            await _wait_for(lambda: _count(store, DeadLetter) == 1, timeout=30)
        finally:
            await bus.close()

    asyncio.run(go())
    kept = store.read(lambda s: s.scalars(select(DeadLetter)).one())
    assert (kept.consumer, kept.event_id, kept.attempts) == ("alerts", envelope.event_id, 20)
    assert "delivery_limit" in kept.last_error
    # No alert about a dead-lettered alert (a broken alerts consumer must not feed itself).
    assert _count(store, OutboxEvent) == 1
    assert replay_dead_letter(store, [*ALERTS], kept.id, actor="test") == "handled"
    assert _count(store, Alert) == 1


def test_an_event_the_broker_dead_letters_raises_an_alert(
    store: Store, amqp_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An order.accepted the broker dead-lettered was only recorded in dead_letter: no alert, not
    even an error in the log, while the ORU^R01 it should have sent the hospital never went out."""
    envelope = Envelope(
        event_id=uuid7(),
        type=EventType.ORDER_ACCEPTED.value,
        aggregate_id="order-3",
        partition=2,
        occurred_at=datetime.now(UTC),
        data={"order_id": "order-3", "coi": "COI-3", "product_code": "P", "ordering_partner": "x"},
    )

    async def go() -> None:
        runner = ConsumerRunner(store, [*ALERTS], backoff_base_s=0.01)
        bus = AmqpBus(amqp_url, runner, partitions=4, prefix=prefix)
        await bus.start()
        try:
            await _dead_letter_as_the_broker(amqp_url, prefix, envelope, f"{prefix}.hl7v2-oru.p2")
            await _wait_for(lambda: _count(store, DeadLetter) == 1, timeout=30)
            assert await OutboxRelay(store, bus).drain() == 1
            await _wait_for(lambda: _count(store, Alert) == 1, timeout=30)
        finally:
            await bus.close()

    with caplog.at_level(logging.ERROR, logger="hub.messaging.amqp"):
        asyncio.run(go())
    alert = store.read(lambda s: s.scalars(select(Alert)).one())
    assert (alert.severity, alert.kind, alert.order_id) == ("critical", "bus.dead-lettered", "order-3")
    assert envelope.event_id in alert.message
    assert "hl7v2-oru" in alert.message
    assert [r for r in caplog.records if envelope.event_id in r.getMessage() and r.levelno == logging.ERROR]


async def _dead_letter_as_the_broker(amqp_url: str, prefix: str, envelope: Envelope, queue: str) -> None:
    """Publish as the broker dead-letters: the body, and an x-death header naming the queue."""
    conn = await aio_pika.connect(amqp_url)
    channel = await conn.channel()
    dead = await channel.get_exchange(f"{prefix}.dead")
    headers = {"x-death": [{"queue": queue, "reason": "delivery_limit", "count": 20}]}
    await dead.publish(
        aio_pika.Message(body=envelope.model_dump_json().encode(), message_id=envelope.event_id, headers=headers),
        routing_key="",
    )
    await conn.close()


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
