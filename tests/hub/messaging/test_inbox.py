from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from hub import canonical
from hub.db.models import InboxMessage, OutboxEvent, TherapyOrder
from hub.db.uow import Store, Work, open_store
from hub.errors import GuardFailed, HubError
from hub.messaging.inbox import InboxOutcome, InboxStatus, Interpretation, receive
from hub.orders.service import OrderService
from hub.partners.loader import PartnerDirectory
from tests.builders import place_cmd

R = TypeVar("R")


def _render(err: HubError | None, exc: Exception) -> bytes:
    return f"NACK {err.message if err else 'internal'}".encode()


def _receive(store: Store, external_id: str, raw: bytes, interpret, **kw) -> object:  # type: ignore[no-untyped-def]
    options = {"partner": "st-marys", "channel": "test", "render_conflict": lambda m: b"CONFLICT", **kw}
    return store.run(
        lambda w: receive(w, external_id=external_id, raw=raw, interpret=interpret, render_error=_render, **options)
    )


def _race(
    url: str,
    first: Callable[[Work], InboxOutcome],
    second: Callable[[Work], InboxOutcome],
    started: threading.Event,
    check: Callable[[Session], R],
) -> tuple[InboxOutcome, InboxOutcome, R]:
    """``first`` and ``second`` on two stores (two processes' connections); ``second`` starts once
    ``first`` sets ``started``. Returns both outcomes and what ``check`` reads afterwards."""
    first_store, second_store = open_store(url), open_store(url)
    outcomes: dict[str, InboxOutcome] = {}

    def run_second() -> None:
        started.wait(5)
        outcomes["second"] = second_store.run(second)

    try:
        racer = threading.Thread(target=run_second)
        racer.start()
        outcomes["first"] = first_store.run(first)
        racer.join(10)
        with first_store.reading() as session:
            checked = check(session)
    finally:
        first_store.dispose()
        second_store.dispose()
    return outcomes["first"], outcomes["second"], checked


def test_stored_before_interpretation_and_duplicates_answered_the_same(
    store: Store, partners: PartnerDirectory
) -> None:
    calls = []

    def interpret(work: Work, message_id: str) -> Interpretation:
        calls.append(message_id)
        view = OrderService(work, partners).place(place_cmd(placer="INBOX-1"))
        return Interpretation(InboxStatus.handled, b"ACK " + view.coi.encode(), view.id)

    first = _receive(store, "MSG-1", b"raw-1", interpret)
    again = _receive(store, "MSG-1", b"raw-1", interpret)
    assert first.response == again.response
    assert again.duplicate
    assert len(calls) == 1
    conflict = _receive(store, "MSG-1", b"raw-2 different", interpret)
    assert conflict.status is InboxStatus.conflict
    assert conflict.response == b"CONFLICT"
    with store.reading() as s:
        rows = s.scalars(select(InboxMessage).order_by(InboxMessage.received_at)).all()
        assert [r.raw for r in rows] == [b"raw-1", b"raw-2 different"]
        assert s.scalars(select(TherapyOrder)).all()[0].placer_number == "INBOX-1"


def test_refused_interpretation_keeps_the_message_and_writes_nothing_else(
    store: Store, partners: PartnerDirectory
) -> None:
    def interpret(work: Work, message_id: str) -> Interpretation:
        OrderService(work, partners).place(place_cmd(placer="INBOX-2"))
        raise GuardFailed("refused after writing")

    out = _receive(store, "MSG-2", b"raw", interpret)
    assert out.status is InboxStatus.rejected
    assert out.response == b"NACK refused after writing"
    with store.reading() as s:
        assert s.scalars(select(TherapyOrder)).all() == []
        row = s.scalars(select(InboxMessage)).one()
        assert row.status == "rejected"
        assert row.raw == b"raw"
        assert row.error == "refused after writing"


def test_a_crash_in_a_mapping_is_kept_for_replay(store: Store) -> None:
    def interpret(work: Work, message_id: str) -> Interpretation:
        raise KeyError("mapping bug")

    out = _receive(store, "MSG-3", b"raw", interpret)
    assert out.status is InboxStatus.failed
    assert out.response == b"NACK internal"


def _receive_buffered(store: Store, external_id: str, raw: bytes, interpret) -> object:  # type: ignore[no-untyped-def]
    return _receive(
        store, external_id, raw, interpret, partner="polar-courier", channel="test-webhook", interpret_writes=False
    )


def test_fast_path_stores_once_with_its_status_and_its_event(store: Store) -> None:
    """``interpret_writes=False``: the interpretation only emits; the message is inserted once,
    already settled, in the same transaction as the event; a refusal drops what it emitted."""
    from hub.events import EventType, InboundReceived

    def accept(work: Work, message_id: str) -> Interpretation:
        payload = InboundReceived(partner="polar-courier", channel="test-webhook", inbox_message_id=message_id)
        work.emit(EventType.COURIER_WEBHOOK_RECEIVED, "polar-courier:T1", payload)
        return Interpretation(InboxStatus.received, b"accepted", message_type="tracker.updated")

    def refuse(work: Work, message_id: str) -> Interpretation:
        payload = InboundReceived(partner="polar-courier", channel="test-webhook", inbox_message_id=message_id)
        work.emit(EventType.COURIER_WEBHOOK_RECEIVED, "polar-courier:T2", payload)
        raise GuardFailed("not a shipment of ours")

    first = _receive_buffered(store, "EVT-1", b"body-1", accept)
    again = _receive_buffered(store, "EVT-1", b"body-1", accept)
    assert (again.duplicate, again.response, again.message_id) == (True, b"accepted", first.message_id)
    refused = _receive_buffered(store, "EVT-2", b"body-2", refuse)
    assert refused.status is InboxStatus.rejected
    with store.reading() as s:
        rows = {r.external_id: r for r in s.scalars(select(InboxMessage))}
        assert rows["EVT-1"].status == "received"
        assert rows["EVT-1"].message_type == "tracker.updated"
        assert rows["EVT-1"].handled_at is None  # handled later, from the bus
        assert rows["EVT-2"].status == "rejected"
        assert rows["EVT-2"].error == "not a shipment of ours"
        events = s.scalars(select(OutboxEvent)).all()
        assert [e.aggregate_id for e in events] == ["polar-courier:T1"]


def test_driver_level_writes_report_duplicates_as_conflicts(store: Store) -> None:
    """The hot paths write through the driver (hub.db.bulk); a uniqueness violation there must still
    reach the edge as a Conflict (the partner's concurrent duplicate), not as a crash."""
    import pytest

    from hub.db.bulk import insert_rows
    from hub.db.models import table_of
    from hub.db.types import utcnow
    from hub.errors import Conflict

    row = {
        "partner": "p",
        "channel": "c",
        "external_id": "same",
        "content_hash": "0" * 64,
        "raw": b"x",
        "received_at": utcnow(),
        "status": "received",
    }
    store.run(lambda w: insert_rows(w.session, table_of(InboxMessage), [{**row, "id": "a"}]))
    with pytest.raises(Conflict):
        store.run(lambda w: insert_rows(w.session, table_of(InboxMessage), [{**row, "id": "b"}]))


def test_fast_path_repeat_and_conflict_inside_one_transaction(store: Store) -> None:
    """The fast path inserts with ON CONFLICT DO NOTHING: a repeat in the same transaction (two
    deliveries in one committer batch) is answered as the first and its event is dropped; other
    content under the same id is stored apart as a conflict."""
    from hub.events import EventType, InboundReceived

    def accept(work: Work, message_id: str) -> Interpretation:
        payload = InboundReceived(partner="polar-courier", channel="test-webhook", inbox_message_id=message_id)
        work.emit(EventType.COURIER_WEBHOOK_RECEIVED, "polar-courier:T1", payload)
        return Interpretation(InboxStatus.received, b"accepted " + message_id.encode())

    def three(work: Work) -> list[InboxOutcome]:
        return [
            receive(
                work,
                partner="polar-courier",
                channel="test-webhook",
                external_id="EVT-9",
                raw=raw,
                interpret=accept,
                render_error=_render,
                render_conflict=lambda m: b"CONFLICT",
                interpret_writes=False,
            )
            for raw in (b"body", b"body", b"other body")
        ]

    first, again, other = store.run(three)
    assert not first.duplicate
    assert again.duplicate
    assert again.message_id == first.message_id
    assert again.response == first.response
    assert other.status is InboxStatus.conflict
    assert other.response == b"CONFLICT"
    with store.reading() as s:
        rows = s.scalars(select(InboxMessage)).all()
        conflict_id = "EVT-9#conflict:" + canonical.sha256_hex(b"other body")[:16]
        assert sorted(r.external_id for r in rows) == sorted(["EVT-9", conflict_id])
        assert len(s.scalars(select(OutboxEvent)).all()) == 1


def test_a_crash_is_logged_once_under_the_stored_message(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """The fast path interprets before it knows a delivery is a repeat: a repeat of a delivery
    whose interpretation crashed is answered from the stored message and logs nothing more."""

    def crash(work: Work, message_id: str) -> Interpretation:
        raise KeyError("mapping bug")

    with caplog.at_level(logging.ERROR, logger="hub.messaging.inbox"):
        first = _receive_buffered(store, "EVT-C", b"body", crash)
        again = _receive_buffered(store, "EVT-C", b"body", crash)
    assert first.status is InboxStatus.failed
    assert again.duplicate
    assert [r.getMessage() for r in caplog.records] == [
        f"inbox message {first.message_id} from polar-courier/test-webhook failed: KeyError"
    ]


def test_fast_path_two_writers_racing_on_one_id_store_it_once(db_url: str) -> None:
    """Two processes (``serve --workers``) take the same delivery at once: the second insert waits
    for the first transaction (PostgreSQL: on the unique index; SQLite: on the write lock), finds
    the id taken and answers as a repeat. One message, one event."""
    from hub.events import EventType, InboundReceived

    def accept(work: Work, message_id: str) -> Interpretation:
        payload = InboundReceived(partner="polar-courier", channel="test-webhook", inbox_message_id=message_id)
        work.emit(EventType.COURIER_WEBHOOK_RECEIVED, "polar-courier:T1", payload)
        return Interpretation(InboxStatus.received, b"accepted " + message_id.encode())

    def deliver(work: Work) -> InboxOutcome:
        return receive(
            work,
            partner="polar-courier",
            channel="test-webhook",
            external_id="EVT-RACE",
            raw=b"body",
            interpret=accept,
            render_error=_render,
            interpret_writes=False,
        )

    inserted = threading.Event()

    def first(work: Work) -> InboxOutcome:
        out = deliver(work)
        inserted.set()
        time.sleep(0.3)  # the transaction stays open while the second writer arrives
        return out

    def counts(s: Session) -> tuple[int, int]:
        return len(s.scalars(select(InboxMessage)).all()), len(s.scalars(select(OutboxEvent)).all())

    one, two, stored = _race(db_url, first, deliver, inserted, counts)
    assert stored == (1, 1)
    assert not one.duplicate
    assert two.duplicate
    assert two.message_id == one.message_id
    assert two.response == one.response


@pytest.mark.postgres
def test_a_concurrent_duplicate_order_is_answered_as_if_it_came_second(pg_url: str, partners: PartnerDirectory) -> None:
    """Two messages (different ids) carry the same placer number and arrive on two processes at
    once: the second's insert waits for the first's COMMIT and then violates the unique constraint.
    It is answered as it would have been one after the other (the order already exists), not as
    an internal error."""
    from tests.conftest import truncate_postgres

    truncate_postgres(pg_url)
    inserted, looked = threading.Event(), threading.Event()

    def place(work: Work, message_id: str) -> Interpretation:
        view = OrderService(work, partners).place(place_cmd(placer="RACE-1"))
        return Interpretation(InboxStatus.handled, b"ACK " + view.coi.encode(), view.id)

    def second_place(work: Work, message_id: str) -> Interpretation:
        looked.set()
        return place(work, message_id)

    def deliver(
        external_id: str, raw: bytes, interpret: Callable[[Work, str], Interpretation]
    ) -> Callable[[Work], InboxOutcome]:
        def job(work: Work) -> InboxOutcome:
            return receive(
                work,
                partner="st-marys",
                channel="test",
                external_id=external_id,
                raw=raw,
                interpret=interpret,
                render_error=_render,
            )

        return job

    def first(work: Work) -> InboxOutcome:
        out = deliver("MSG-A", b"a", place)(work)
        inserted.set()
        looked.wait(5)
        time.sleep(0.3)  # the second has looked, found nothing, and now waits on the unique index
        return out

    def stored(s: Session) -> tuple[int, dict[str, str]]:
        rows = s.scalars(select(InboxMessage))
        return len(s.scalars(select(TherapyOrder)).all()), {r.external_id: r.status for r in rows}

    one, two, (orders, statuses) = _race(pg_url, first, deliver("MSG-B", b"b", second_place), inserted, stored)
    assert orders == 1
    assert one.status is InboxStatus.handled
    assert two.status is InboxStatus.rejected
    assert two.response is not None
    assert b"already exists" in two.response
    assert statuses["MSG-B"] == "rejected"
