"""RabbitMQ bus (``CGTHUB_BUS_URL=amqp://…``) with aio-pika.

Topology (names start with ``CGTHUB_BUS_PREFIX``, default ``cgthub``): one durable topic exchange
``cgthub.events``; per consumer and partition a durable quorum queue ``cgthub.<consumer>.p<k>`` with
single-active-consumer (one process at a time consumes a partition, in order: per-order ordering)
and a delivery limit with a dead-letter exchange as the broker-side safety net. Routing key
``p<k>.<event type>``; bindings ``p<k>.<pattern>``.

What the broker dead-letters (a message delivered ``x-delivery-limit`` times without an ack: a
consumer process that keeps dying on it) lands in ``<prefix>.dead``. A keeper task moves each one
into the ``dead_letter`` table, under the consumer whose queue gave it up, where ``cgt-hub events
replay`` finds it, and raises a critical alert. Nothing is left in a queue no one reads.

A store outage is not a reason to dead-letter: a consumer that finds the store down returns its
deliveries (closing its channel, which keeps their order) and takes none again until the store
answers a probe, so an outage of any length costs each event in flight one delivery.

Publishing waits for the broker's confirm with ``mandatory=True``; a publish that is not confirmed
raises and the outbox row stays unpublished.

Reconnection is ours, not aio-pika's robust connection: measured here, after a broker restart the
robust channel kept raising ``ChannelInvalidStateError`` and consumer iterators died. So the
publisher reconnects (and re-declares the topology) on the next publish after a failure, and each
consumer task is supervised: when its channel dies it reconnects with backoff. Publisher and
consumers use separate connections, so a slow consumer never throttles publishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractIncomingMessage
from sqlalchemy import select

from hub.db.types import storable
from hub.db.uow import Work
from hub.events import AlertRaised, Envelope, EventType
from hub.ids import uuid7
from hub.messaging.consumers import Consumer, ConsumerRunner, record_dead_letter

log = logging.getLogger(__name__)


class AmqpBus:
    def __init__(
        self,
        url: str,
        runner: ConsumerRunner,
        *,
        partitions: int = 4,
        consume: bool = True,
        prefetch: int = 64,
        connect_timeout_s: float = 30.0,
        prefix: str = "cgthub",
        store_probe_max_s: float = 15.0,
        ping_timeout_s: float = 3.0,
    ) -> None:
        self.url = url
        self.runner = runner
        self.partitions = partitions
        self.consume = consume
        self.prefetch = prefetch
        self.connect_timeout_s = connect_timeout_s
        self.prefix = prefix
        self.store_probe_max_s = store_probe_max_s
        self.ping_timeout_s = ping_timeout_s
        self.exchange_name = f"{prefix}.events"
        self.dead_name = f"{prefix}.dead"
        self._pub_conn: AbstractConnection | None = None
        self._pub: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._pub_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        # Per consuming task: its connection while subscribed (None while reconnecting), and
        # which tasks are waiting for the store; for ping().
        self._consumers: dict[str, AbstractConnection | None] = {}
        self._waiting_for_store: set[str] = set()
        self._probe_lock = asyncio.Lock()
        self._store_answered_at = float("-inf")

    # ------------------------------------------------------------------ connections
    async def _connect(self, timeout_s: float | None = None) -> AbstractConnection:
        deadline = asyncio.get_running_loop().time() + (self.connect_timeout_s if timeout_s is None else timeout_s)
        delay = 0.2
        while True:
            try:
                return await aio_pika.connect(self.url, timeout=10)
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise ConnectionError(f"RabbitMQ unreachable: {type(exc).__name__}") from exc
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    def queue_args(self, max_attempts: int) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-single-active-consumer": True,
            "x-delivery-limit": max_attempts * 4,
            "x-dead-letter-exchange": self.dead_name,
        }

    def queue_name(self, consumer: Consumer, partition: int) -> str:
        return f"{self.prefix}.{consumer.name}.p{partition}"

    async def _declare(self, channel: AbstractChannel) -> AbstractExchange:
        exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        dead = await channel.declare_exchange(self.dead_name, aio_pika.ExchangeType.FANOUT, durable=True)
        dq = await channel.declare_queue(self.dead_name, durable=True, arguments={"x-queue-type": "quorum"})
        await dq.bind(dead)
        # Every consumer's queues exist even in a publish-only process: a published event must
        # always have somewhere to go.
        for consumer in self.runner.consumers:
            for k in range(self.partitions):
                q = await channel.declare_queue(
                    self.queue_name(consumer, k), durable=True, arguments=self.queue_args(self.runner.max_attempts)
                )
                for pattern in consumer.patterns:
                    await q.bind(exchange, routing_key=f"p{k}.{pattern}")
        return exchange

    def _publisher_up(self) -> bool:
        # ``is_closed`` alone stays False when the broker drops the connection (aio-pika sets it
        # only on a local close()); ``connected`` is cleared when the transport is lost.
        return (
            self._pub_conn is not None
            and self._pub_conn.connected.is_set()
            and not self._pub_conn.is_closed
            and self._pub is not None
            and not self._pub.is_closed
            and self._exchange is not None
        )

    async def _ensure_publisher(self, connect_timeout_s: float | None = None) -> AbstractExchange:
        async with self._pub_lock:
            if not self._publisher_up():
                await self._drop_publisher()
                self._pub_conn = await self._connect(connect_timeout_s)
                # on_return_raises: a message the broker cannot route (mandatory=True) is returned
                # before its confirm; without this, aio-pika counts the confirm as success and the
                # relay marks the event published, though no queue holds it.
                self._pub = await self._pub_conn.channel(publisher_confirms=True, on_return_raises=True)
                self._exchange = await self._declare(self._pub)
            assert self._exchange is not None
            return self._exchange

    async def _drop_publisher(self) -> None:
        if self._pub_conn is not None:
            with contextlib.suppress(Exception):
                await self._pub_conn.close()
        self._pub_conn, self._pub, self._exchange = None, None, None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self._ensure_publisher()
        if self.consume:
            for consumer in self.runner.consumers:
                for k in range(self.partitions):
                    self._tasks.append(asyncio.create_task(self._supervise(consumer, k)))
            self._tasks.append(asyncio.create_task(self._keep_dead_letters()))

    async def close(self) -> None:
        self._closing = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()
        await self._drop_publisher()

    async def ping(self) -> bool:
        """Ready: the publisher is connected (reconnected here if the broker dropped it while
        nothing was published, so a quiet hub does not stay "not ready") and every consumer is
        subscribed, or waiting for the store (which the database check reports)."""
        if not self._publisher_up():
            try:
                await asyncio.wait_for(self._ensure_publisher(self.ping_timeout_s), timeout=self.ping_timeout_s)
            except Exception:
                return False
        return self._consumers_up()

    def _consumers_up(self) -> bool:
        if not self.consume:
            return True
        if any(t.done() for t in self._tasks) or len(self._consumers) < len(self._tasks):
            return False
        return all(
            what in self._waiting_for_store or (conn is not None and conn.connected.is_set())
            for what, conn in self._consumers.items()
        )

    # ------------------------------------------------------------------ publish
    async def publish(self, envelope: Envelope) -> None:
        exchange = await self._ensure_publisher()
        try:
            await exchange.publish(
                aio_pika.Message(
                    body=envelope.model_dump_json().encode(),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=envelope.event_id,
                    type=envelope.type,
                    headers={"aggregate_id": envelope.aggregate_id},
                ),
                routing_key=envelope.routing_key(),
                mandatory=True,
                timeout=10,
            )
        except Exception:
            async with self._pub_lock:
                await self._drop_publisher()
            raise

    # ------------------------------------------------------------------ consume
    async def _supervise(self, consumer: Consumer, partition: int) -> None:
        async def handle(message: AbstractIncomingMessage) -> None:
            await self._handle(consumer, message)

        await self._consume(
            f"consumer {consumer.name}.p{partition}",
            self.queue_name(consumer, partition),
            self.queue_args(self.runner.max_attempts),
            self.prefetch,
            handle,
        )

    async def _keep_dead_letters(self) -> None:
        """Record what the broker dead-lettered, then ack it (see the module docstring). The store
        down: the message stays in the queue and the channel reopens later."""

        async def keep(message: AbstractIncomingMessage) -> None:
            try:
                recorded = await self.runner.store.run_async(self._dead_letter_job(message), actor="bus:dead-letters")
            except Exception as exc:
                raise _StoreDown from exc
            if recorded:
                log.error(
                    "event %s was dead-lettered by the broker (%s); recorded in dead_letter with an alert",
                    message.message_id,
                    _death(message).get("reason") or "dead-lettered",
                )
            await message.ack()

        await self._consume("dead-letter keeper", self.dead_name, {"x-queue-type": "quorum"}, 16, keep)

    async def _consume(
        self,
        what: str,
        queue_name: str,
        arguments: dict[str, Any],
        prefetch: int,
        handle: Callable[[AbstractIncomingMessage], Awaitable[None]],
    ) -> None:
        """Consume one queue until the bus closes; when the channel dies (or ``handle`` raises),
        reconnect with backoff. When ``handle`` found the store down (:class:`_StoreDown`), take
        no delivery again until the store answers (:meth:`_until_store_answers`)."""
        self._consumers[what] = None
        delay = 0.2
        while not self._closing:
            conn: AbstractConnection | None = None
            store_down = False
            try:
                conn = await self._connect()
                channel = await conn.channel()
                await channel.set_qos(prefetch_count=prefetch)
                queue = await channel.declare_queue(queue_name, durable=True, arguments=arguments)
                async with queue.iterator() as messages:
                    self._consumers[what] = conn
                    async for message in messages:
                        await handle(message)
                        # A handled message resets the backoff, a new connection does not: a queue
                        # that fails at once each time must not cost a delivery every 0.2 s.
                        delay = 0.2
            except asyncio.CancelledError:
                raise
            except _StoreDown:
                store_down = True
            except Exception as exc:
                if not self._closing:
                    log.warning("%s lost its channel (%s); reconnecting", what, type(exc).__name__)
            finally:
                self._consumers[what] = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            if self._closing:
                break
            if store_down:
                await self._until_store_answers(what, delay)
            else:
                await asyncio.sleep(delay)
            delay = min(10.0, delay * 2)

    async def _until_store_answers(self, what: str, delay: float) -> None:
        """Wait off the queue until the store commits again. Why: on a quorum queue every return
        of a delivery counts towards ``x-delivery-limit``; a consumer that kept taking deliveries
        through an outage, and returning them, had the broker dead-letter every event in flight
        within a minute. One probe runs at a time for all of this bus's consumers."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        if not self._waiting_for_store:
            log.warning("the store is unavailable: bus consumers take no deliveries until it answers")
        self._waiting_for_store.add(what)
        try:
            while not self._closing:
                await asyncio.sleep(delay)
                async with self._probe_lock:
                    if self._store_answered_at >= since or await self._store_answers():
                        return
                delay = min(self.store_probe_max_s, delay * 2)
        finally:
            self._waiting_for_store.discard(what)

    async def _store_answers(self) -> bool:
        """One round trip through the committer, the path the consumers write by."""
        try:
            await self.runner.store.run_async(_probe_store, actor="bus:store-probe")
        except Exception:
            return False
        self._store_answered_at = asyncio.get_running_loop().time()
        log.info("the store answers again; bus consumers resume")
        return True

    def _dead_letter_job(self, message: AbstractIncomingMessage) -> Callable[[Work], bool]:
        first = _death(message)
        queue = str(first.get("queue") or "unknown")
        reason = str(first.get("reason") or "dead-lettered")
        count = first.get("count")
        try:
            envelope: Envelope | None = Envelope.model_validate_json(message.body)
        except Exception:
            envelope = None

        consumer = queue.removeprefix(f"{self.prefix}.").rsplit(".p", 1)[0][:64]
        event_id = envelope.event_id if envelope else str(message.message_id or uuid7())[:36]
        event_type = (envelope.type if envelope else "unreadable")[:64]

        def job(work: Work) -> bool:
            recorded = record_dead_letter(
                work,
                consumer=consumer,
                event_id=event_id,
                event_type=event_type,
                payload=storable(message.body.decode("utf-8", "replace")),
                attempts=count if isinstance(count, int) else 0,
                error=f"dead-lettered by the broker from {queue[:120]} ({reason[:40]})",
            )
            # The event's effect for this consumer (an ORU to a hospital, a notification) did not
            # happen: someone must know. Not for an alert itself, so a broken alerts consumer
            # cannot feed itself (its dead letters are still logged and listed).
            if recorded and event_type != EventType.ALERT_RAISED.value:
                order_id = envelope.data.get("order_id") if envelope else None
                order_id = order_id if isinstance(order_id, str) else None
                work.emit(
                    EventType.ALERT_RAISED,
                    order_id or "bus.dead-lettered",
                    AlertRaised(
                        order_id=order_id,
                        severity="critical",
                        kind="bus.dead-lettered",
                        message=(
                            f"event {event_id} ({event_type}) was dead-lettered by the broker for consumer "
                            f"{consumer} ({reason[:40]}): its effect did not happen. `cgt-hub events dead` "
                            "lists it; `cgt-hub events replay <id>` runs it once the cause is fixed"
                        ),
                    ),
                )
            return recorded

        return job

    async def _handle(self, consumer: Consumer, message: AbstractIncomingMessage) -> None:
        try:
            envelope = Envelope.model_validate_json(message.body)
        except Exception:
            log.error("unreadable message %s on %s; dead-lettering", message.message_id, consumer.name)
            await message.reject(requeue=False)
            return
        try:
            await self.runner.process(consumer, envelope)
        except Exception as exc:
            # The store is down (or would not even take the dead letter): the broker must have
            # this message back, and the ones prefetched after it, in that order. Not a nack: the
            # broker would redeliver it at once to this still-subscribed consumer, behind those;
            # and going on would handle them before it. Closing the channel returns every
            # unacknowledged message together, in delivery order (one delivery each); the
            # supervisor reopens it once the store answers.
            log.warning(
                "consumer %s could not finish event %s: %s", consumer.name, envelope.event_id, type(exc).__name__
            )
            with contextlib.suppress(Exception):
                await message.channel.close()
            raise _StoreDown from exc
        await message.ack()


def _death(message: AbstractIncomingMessage) -> dict[str, Any]:
    """The broker's first ``x-death`` entry (queue, reason, count), or {}."""
    deaths = message.headers.get("x-death") if message.headers else None
    first = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    return first


def _probe_store(work: Work) -> None:
    work.session.execute(select(1))


class _StoreDown(Exception):
    """A consumer could not record its outcome: its channel must close so that nothing after it
    is handled first."""
