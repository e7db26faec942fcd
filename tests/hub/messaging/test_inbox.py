from __future__ import annotations

from sqlalchemy import select

from hub.db.models import InboxMessage, TherapyOrder
from hub.db.uow import Store, Work
from hub.errors import GuardFailed, HubError
from hub.messaging.inbox import InboxStatus, Interpretation, receive
from hub.orders.service import OrderService
from hub.partners.loader import PartnerDirectory
from tests.builders import place_cmd


def _render(err: HubError | None, exc: Exception) -> bytes:
    return f"NACK {err.message if err else 'internal'}".encode()


def _receive(store: Store, external_id: str, raw: bytes, interpret) -> object:  # type: ignore[no-untyped-def]
    return store.run(
        lambda w: receive(
            w,
            partner="st-marys",
            channel="test",
            external_id=external_id,
            raw=raw,
            interpret=interpret,
            render_error=_render,
            render_conflict=lambda m: b"CONFLICT",
        )
    )


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
