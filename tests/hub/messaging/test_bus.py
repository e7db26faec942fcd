from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select, update

from hub.alerts.tasks import CONSUMERS as ALERTS
from hub.db.models import Alert, ConsumerHandled, DeadLetter, OutboxEvent
from hub.db.uow import Store, Work
from hub.errors import Conflict, GuardFailed, StoreUnavailable
from hub.events import AlertRaised, Envelope, EventType
from hub.messaging.bus import MemoryBus
from hub.messaging.consumers import Consumer, ConsumerRunner, replay_dead_letter
from hub.messaging.relay import OutboxRelay, envelope_of


def _emit(store: Store, n: int, order: str = "order-1") -> None:
    for i in range(n):
        store.run(
            lambda w, i=i: w.emit(
                EventType.ALERT_RAISED,
                order,
                AlertRaised(order_id=order, severity="info", kind="test", message=f"m{i}"),
            )
        )


def _count(store: Store, model: Any, *where: Any) -> int:
    return store.read(lambda s: s.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def test_outbox_relay_memory_bus_idempotent_consumer(store: Store) -> None:
    seen: list[str] = []

    def record(work: Work, env: Envelope) -> None:
        seen.append(env.data["message"])

    runner = ConsumerRunner(store, [*ALERTS, Consumer("recorder", ("alert.*",), record)], backoff_base_s=0.001)
    relay = OutboxRelay(store, MemoryBus(runner))
    _emit(store, 5)
    assert asyncio.run(relay.drain()) == 5
    assert seen == [f"m{i}" for i in range(5)]  # in commit order
    assert _count(store, Alert) == 5
    assert _count(store, OutboxEvent, OutboxEvent.published_at.is_(None)) == 0
    # Redelivery (e.g. a crash after publish, before marking) changes nothing.
    envelopes = [
        envelope_of(r).model_copy(update={"data": {**envelope_of(r).data, "message": "again"}})
        for r in store.read(lambda s: s.scalars(select(OutboxEvent)).all())
    ]
    for env in envelopes:
        assert asyncio.run(runner.process(runner.consumers[0], env)) == "duplicate"
    assert _count(store, Alert) == 5


def test_retry_then_dead_letter(store: Store) -> None:
    attempts: list[int] = []

    def flaky(work: Work, env: Envelope) -> None:
        attempts.append(1)
        raise RuntimeError("partner down")

    runner = ConsumerRunner(store, [Consumer("flaky", ("#",), flaky)], max_attempts=3, backoff_base_s=0.001)
    relay = OutboxRelay(store, MemoryBus(runner))
    _emit(store, 1)
    assert asyncio.run(relay.drain()) == 1
    assert len(attempts) == 3
    assert _count(store, DeadLetter) == 1
    assert _count(store, ConsumerHandled) == 0


def test_a_store_outage_uses_no_attempts_and_dead_letters_nothing(store: Store, monkeypatch: Any) -> None:
    """The store down for each of a consumer's attempts, and back when the dead letter was
    written: an event nothing was wrong with was dead-lettered (its effect never happened). The
    store being down is not the event's failure: the bus is told to redeliver it."""
    outage = iter(range(3))  # the next 3 commits fail
    real_run_async = store.run_async

    async def run_async(job: Any, *, actor: str = "system") -> Any:
        if next(outage, None) is not None:
            raise StoreUnavailable()
        return await real_run_async(job, actor=actor)

    monkeypatch.setattr(store, "run_async", run_async)
    runner = ConsumerRunner(store, [*ALERTS], max_attempts=3, backoff_base_s=0.001)
    _emit(store, 1)
    envelope = envelope_of(store.read(lambda s: s.scalars(select(OutboxEvent)).one()))
    with pytest.raises(StoreUnavailable):
        asyncio.run(runner.process(runner.consumers[0], envelope))
    assert _count(store, DeadLetter) == 0
    # The redelivery, once the store answers, is handled like any event.
    for _ in range(2):
        with pytest.raises(StoreUnavailable):
            asyncio.run(runner.process(runner.consumers[0], envelope))
    assert asyncio.run(runner.process(runner.consumers[0], envelope)) == "handled"
    assert (_count(store, Alert), _count(store, DeadLetter)) == (1, 0)


def test_a_dead_letter_is_replayed_once_its_cause_is_fixed(store: Store) -> None:
    """Dead letters could only be listed: the event's effect for that consumer was lost for good."""
    partner_up = False
    handled: list[str] = []

    def flaky(work: Work, env: Envelope) -> None:
        if not partner_up:
            raise RuntimeError("partner down")
        handled.append(env.event_id)
        work.audit("create", "Thing", env.event_id)

    consumers = [Consumer("flaky", ("#",), flaky)]
    runner = ConsumerRunner(store, consumers, max_attempts=2, backoff_base_s=0.001)
    _emit(store, 1)
    assert asyncio.run(OutboxRelay(store, MemoryBus(runner)).drain()) == 1
    dead = store.read(lambda s: s.scalars(select(DeadLetter)).one())
    with pytest.raises(RuntimeError):  # still down: nothing changes, the dead letter stays
        replay_dead_letter(store, consumers, dead.id, actor="test")
    assert store.read(lambda s: s.get(DeadLetter, dead.id)).replayed_at is None  # type: ignore[union-attr]
    partner_up = True
    assert replay_dead_letter(store, consumers, dead.id, actor="test") == "handled"
    assert handled == [dead.event_id]
    assert _count(store, ConsumerHandled) == 1
    assert store.read(lambda s: s.get(DeadLetter, dead.id)).replayed_at is not None  # type: ignore[union-attr]
    with pytest.raises(Conflict, match="was replayed"):
        replay_dead_letter(store, consumers, dead.id, actor="test")
    store.run(lambda w: w.session.execute(update(DeadLetter).values(replayed_at=None)))
    with pytest.raises(GuardFailed, match="does not run"):  # a consumer this hub no longer runs
        replay_dead_letter(store, [], dead.id, actor="test")


def test_a_relay_batch_ends_within_its_lease(store: Store) -> None:
    """The lease was renewed once per batch of up to 500 events: slow confirms could outlast it,
    and another process could take it and publish the same events. A batch now stops starting
    publishes after its budget; the rest waits for the next batch (after the lease is renewed)."""

    class SlowBus:
        def __init__(self) -> None:
            self.published: list[str] = []

        async def publish(self, envelope: Envelope) -> None:
            await asyncio.sleep(0.05)
            self.published.append(envelope.event_id)

    bus = SlowBus()
    relay = OutboxRelay(store, bus)  # type: ignore[arg-type]
    _emit(store, 10)
    first = asyncio.run(relay.drain_once(budget_s=0.12))
    assert 1 <= first < 10  # stopped early, not stalled
    assert _count(store, OutboxEvent, OutboxEvent.published_at.is_(None)) == 10 - first
    rest = asyncio.run(relay.drain_once())
    assert first + rest == 10
    assert len(bus.published) == len(set(bus.published)) == 10


def test_backoff_is_capped() -> None:
    runner = ConsumerRunner(store=None, consumers=[], backoff_base_s=1, backoff_max_s=5)  # type: ignore[arg-type]
    assert [runner.backoff(a) for a in range(1, 6)] == [1, 2, 4, 5, 5]


def test_an_audit_entry_the_database_would_refuse_fails_only_its_own_job(store: Store) -> None:
    """Audit entries are written at COMMIT, for the whole batch: one the database refuses (an id
    over the column's length; a NUL, on PostgreSQL) failed every job of the batch, and again on
    every retry. It now fails its own job; a NUL is written out."""
    futures = store.run_batch(
        [
            (lambda w: w.audit("create", "Thing", "ok-1", new={"i": 1}), "test"),
            (lambda w: w.audit("create", "Thing", "x" * 200), "test"),
            (lambda w: w.audit("create", "Thing", "nul\x00id", reason="quoted\x00"), "test"),
        ]
    )
    assert futures[0].exception() is None
    assert isinstance(futures[1].exception(), ValueError)
    assert futures[2].exception() is None
    from hub.audit.service import verify_chain
    from hub.db.models import AuditEntry

    assert verify_chain(store).ok
    ids = store.read(lambda s: sorted(s.scalars(select(AuditEntry.entity_id).where(AuditEntry.entity_type == "Thing"))))
    assert ids == ["nul\\x00id", "ok-1"]


def test_group_commit_batches_concurrent_jobs(store: Store) -> None:
    committer = store.start_committer()
    futures = [committer.submit(lambda w, i=i: w.audit("create", "Thing", str(i), new={"i": i})) for i in range(200)]
    bad = committer.submit(lambda w: (_ for _ in ()).throw(ValueError("refused")))
    for f in futures:
        f.result(timeout=30)
    with pytest.raises(ValueError):
        bad.result(timeout=30)
    from hub.audit.service import verify_chain

    result = verify_chain(store)
    assert result.ok
    assert result.checked == 200


def test_a_drain_next_to_a_running_relay_publishes_nothing_itself(store: Store) -> None:
    """``cgt-hub events drain`` published without the relay lease: next to a serving hub, both
    published the same events at once and one order's events could leave out of commit order.
    A drain now waits while another relay holds the lease, and publishes once it is free."""

    class RecordingBus:
        def __init__(self) -> None:
            self.published: list[str] = []

        async def publish(self, envelope: Envelope) -> None:
            self.published.append(envelope.event_id)

    serving_bus, operator_bus = RecordingBus(), RecordingBus()
    serving, operator = OutboxRelay(store, serving_bus), OutboxRelay(store, operator_bus, poll_s=0.01)  # type: ignore[arg-type]
    _emit(store, 3)

    async def both() -> int:
        assert await serving.acquire_lease()
        draining = asyncio.create_task(operator.drain(timeout_s=5))
        await asyncio.sleep(0.1)
        assert not draining.done()  # waits: the serving relay holds the lease
        assert await serving.drain_once() == 3
        return await draining

    assert asyncio.run(both()) == 0
    assert operator_bus.published == []
    assert len(serving_bus.published) == 3
    asyncio.run(serving.release_lease())
    _emit(store, 2)
    assert asyncio.run(operator.drain(timeout_s=5)) == 2  # the lease is free: the drain publishes
    assert len(operator_bus.published) == 2
