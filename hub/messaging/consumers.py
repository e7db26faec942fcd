"""Idempotent consumers with retry, backoff and dead-lettering, independent of the bus.

A consumer's handler runs inside a unit of work together with the insertion of
``(consumer, event_id)`` into ``consumer_handled``: the effect and the record that it happened
commit together, so a redelivered event is skipped. A handler that keeps failing is retried with
capped exponential backoff and, after ``max_attempts``, recorded in ``dead_letter`` and
acknowledged, so one poison event does not block its partition forever. Operators replay it once
the cause is fixed (:func:`replay_dead_letter`, ``cgt-hub events replay``).

The store being unavailable is not the consumer's failure: it does not use up attempts and never
dead-letters; :meth:`ConsumerRunner.process` raises and the bus redelivers once the store answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import insert, select

from hub.db.models import ConsumerHandled, DeadLetter
from hub.db.uow import Store, Work
from hub.errors import Conflict, GuardFailed, NotFound, StoreUnavailable
from hub.events import Envelope
from hub.ids import uuid7

log = logging.getLogger(__name__)

Handler = Callable[[Work, Envelope], None]


@dataclass(frozen=True)
class Consumer:
    name: str
    patterns: tuple[str, ...]
    handle: Handler


@dataclass
class ConsumerRunner:
    store: Store
    consumers: list[Consumer]
    max_attempts: int = 5
    backoff_base_s: float = 0.2
    backoff_max_s: float = 30.0

    def backoff(self, attempt: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1))))

    async def process(self, consumer: Consumer, envelope: Envelope) -> str:
        """Handle one delivery: 'handled', 'duplicate' or 'dead'. Raises :class:`StoreUnavailable`
        (or whatever failed while recording a dead letter) when the store is down: then the bus
        must redeliver the event once the store answers."""
        last_error = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return await self.store.run_async(_job(consumer, envelope), actor=f"consumer:{consumer.name}")
            except StoreUnavailable:
                # Not this event's fault: retrying here would only use up its attempts (and, if
                # the store came back just then, dead-letter an event nothing was wrong with).
                raise
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {str(exc)[:500]}"
                log.warning(
                    "consumer %s failed on event %s (%s), attempt %d/%d: %s",
                    consumer.name,
                    envelope.event_id,
                    envelope.type,
                    attempt,
                    self.max_attempts,
                    type(exc).__name__,
                )
                if attempt < self.max_attempts:
                    await asyncio.sleep(self.backoff(attempt))
        await self.store.run_async(_dead_letter_job(consumer, envelope, self.max_attempts, last_error))
        log.error("event %s dead-lettered for consumer %s", envelope.event_id, consumer.name)
        return "dead"


def _job(consumer: Consumer, envelope: Envelope) -> Callable[[Work], str]:
    def job(work: Work) -> str:
        seen = work.session.execute(
            select(ConsumerHandled.event_id).where(
                ConsumerHandled.consumer == consumer.name, ConsumerHandled.event_id == envelope.event_id
            )
        ).first()
        if seen is not None:
            return "duplicate"
        consumer.handle(work, envelope)
        work.session.execute(
            insert(ConsumerHandled).values(consumer=consumer.name, event_id=envelope.event_id, handled_at=work.now)
        )
        return "handled"

    return job


def _dead_letter_job(consumer: Consumer, envelope: Envelope, attempts: int, error: str) -> Callable[[Work], str]:
    def job(work: Work) -> str:
        record_dead_letter(
            work,
            consumer=consumer.name,
            event_id=envelope.event_id,
            event_type=envelope.type,
            payload=envelope.model_dump_json(),
            attempts=attempts,
            error=error,
        )
        return "dead"

    return job


def record_dead_letter(
    work: Work, *, consumer: str, event_id: str, event_type: str, payload: str, attempts: int, error: str
) -> bool:
    """Keep an event a consumer could not handle, once per (consumer, event), for replay. True if
    this call recorded it (False: it was already kept)."""
    exists = work.session.execute(
        select(DeadLetter.id).where(DeadLetter.consumer == consumer, DeadLetter.event_id == event_id)
    ).first()
    if exists is None:
        work.session.execute(
            insert(DeadLetter).values(
                id=uuid7(),
                consumer=consumer,
                event_id=event_id,
                event_type=event_type,
                payload=payload,
                attempts=attempts,
                last_error=error,
                dead_at=work.now,
                replayed_at=None,
            )
        )
    return exists is None


def replay_dead_letter(store: Store, consumers: list[Consumer], dead_letter_id: str, *, actor: str) -> str:
    """Run a dead letter's consumer on its event once more, now that its cause is fixed: 'handled',
    or 'duplicate' if the consumer handled the event meanwhile. The effect, the consumer's record
    of it and the dead letter's ``replayed_at`` commit together; a handler that fails again changes
    nothing and raises (the dead letter stays, to be replayed later)."""
    by_name = {c.name: c for c in consumers}

    def job(work: Work) -> str:
        row = work.session.execute(
            select(DeadLetter).where(DeadLetter.id == dead_letter_id).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"dead letter {dead_letter_id} is not known")
        if row.replayed_at is not None:
            raise Conflict(f"dead letter {dead_letter_id} was replayed at {row.replayed_at.isoformat()}")
        consumer = by_name.get(row.consumer)
        if consumer is None:
            raise GuardFailed(f"consumer {row.consumer} does not run in this hub (check its settings)")
        result = _job(consumer, Envelope.model_validate_json(row.payload))(work)
        row.replayed_at = work.now
        work.audit(
            "update",
            "DeadLetter",
            row.id,
            old={"replayed_at": None},
            new={"replayed_at": work.now_iso, "result": result},
            reason=f"dead letter replayed by {actor}",
        )
        return result

    return store.run(job, actor=actor)
