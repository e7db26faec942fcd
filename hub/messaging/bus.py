"""The bus contract, topic matching, and the in-process bus (the embedded default).

Consumers subscribe with AMQP topic patterns over event types (``order.*``, ``#``). The in-process
bus delivers each published event to every matching consumer and confirms the publish only after
each of them has durably handled it or dead-lettered it, so an outbox row is marked published only
when nothing more can be lost, exactly as with RabbitMQ's publisher confirms.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

from hub.events import Envelope
from hub.messaging.consumers import ConsumerRunner


class Bus(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, envelope: Envelope) -> None:
        """Return once the broker confirmed the event; raise if it did not."""

    async def ping(self) -> bool: ...


def _match(pattern: tuple[str, ...], key: tuple[str, ...]) -> bool:
    if not pattern:
        return not key
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, key[i:]) for i in range(len(key) + 1))
    if not key:
        return False
    return (head == "*" or head == key[0]) and _match(rest, key[1:])


@lru_cache(maxsize=4096)
def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic semantics: ``*`` is exactly one word, ``#`` zero or more."""
    return _match(tuple(pattern.split(".")), tuple(key.split(".")))


class MemoryBus:
    """In-process delivery with the same retry/idempotency/dead-letter semantics as RabbitMQ."""

    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner
        self.published = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def publish(self, envelope: Envelope) -> None:
        for consumer in self.runner.consumers:
            if any(topic_matches(p, envelope.type) for p in consumer.patterns):
                await self.runner.process(consumer, envelope)
        self.published += 1
