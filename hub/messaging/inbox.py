"""Store every inbound message raw before interpreting it, and answer a repeat exactly as before.

``receive`` runs inside the edge's unit of work. The raw bytes are inserted first; the adapter's
``interpret`` runs in a nested savepoint, so when it is refused or crashes its writes vanish while
the message itself, its status and the answer given are still committed. A duplicate (same partner,
channel and external id with the same content hash) gets the stored answer and changes nothing; the
same external id with different content is stored under a derived id and answered as a conflict.

Edges whose interpretation only emits events (courier webhooks: ``interpret_writes=False``) take a
shorter path: the interpretation runs first and the message is inserted once, with its status, in
the same transaction as the events (unless its id is already stored: then the events are dropped
and it is answered as a repeat). Nothing is acted on or acknowledged before that COMMIT, and a
message whose interpretation fails is still stored (``rejected``/``failed``), so the rule holds:
every message is on disk before anyone answers or acts on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import bindparam, update
from sqlalchemy.exc import IntegrityError

from hub import canonical
from hub.db.bulk import insert_rows, insert_unless_present, select_one
from hub.db.models import InboxMessage, table_of
from hub.db.types import storable
from hub.db.uow import Work, duplicate_conflict
from hub.errors import HubError
from hub.ids import uuid7

log = logging.getLogger(__name__)


class InboxStatus(StrEnum):
    received = "received"
    handled = "handled"
    ignored = "ignored"  # understood, deliberately not acted on (acknowledged so the sender stops)
    rejected = "rejected"  # refused with a reason (partner's mistake or a guard)
    failed = "failed"  # our fault: kept for replay
    conflict = "conflict"  # external id reused with different content
    quarantined = "quarantined"  # set aside by an operator


@dataclass(frozen=True)
class Interpretation:
    status: InboxStatus
    response: bytes | None = None
    order_id: str | None = None
    message_type: str | None = None


@dataclass(frozen=True)
class InboxOutcome:
    message_id: str
    status: InboxStatus
    response: bytes | None
    duplicate: bool = False
    error: HubError | None = None


Interpret = Callable[[Work, str], Interpretation]
RenderError = Callable[[HubError | None, Exception], bytes | None]


def receive(
    work: Work,
    *,
    partner: str,
    channel: str,
    external_id: str,
    raw: bytes,
    interpret: Interpret,
    render_error: RenderError,
    render_conflict: Callable[[InboxMessage], bytes | None] | None = None,
    message_type: str | None = None,
    interpret_writes: bool = True,
) -> InboxOutcome:
    """Store ``raw`` and interpret it once.

    ``interpret_writes=False`` is the fast path for edges whose interpretation only *emits* events
    or audit entries (the Work buffers them) and issues no statements of its own, such as courier
    webhooks acknowledged at receipt: no savepoint is needed to undo it, so the message is
    interpreted first and inserted once, with its final status, by ``INSERT … ON CONFLICT DO
    NOTHING`` — one statement for a new message instead of a lookup, an insert, a savepoint and an
    update. Only when that insert finds the id taken is the message looked up and answered as a
    repeat or a conflict, exactly as on the general path."""
    digest = canonical.sha256_hex(raw)
    external_id = storable(external_id)[:255]
    if not interpret_writes:
        # Interpret, then insert unless the id is already stored: one statement for a new message.
        # A stored id undoes what this interpretation buffered and is answered below, as before.
        try:
            with work.attempt(savepoint=False):
                message_id = uuid7()
                done = _interpret(work, message_id, interpret, render_error, partner, channel, message_type)
                row = _row(work, partner, channel, external_id, digest, raw, message_id, done)
                if not insert_unless_present(work.session, _T, row, _UNIQUE):
                    raise _AlreadyStored
            _report(done, message_id, partner, channel)
            return InboxOutcome(message_id, done.status, done.response, error=done.error)
        except _AlreadyStored:
            pass
    existing = _find(work, partner, channel, external_id)
    if existing is not None:
        if existing.content_hash == digest:
            return InboxOutcome(existing.id, existing.status, existing.response, duplicate=True)
        conflict_id = f"{external_id[:200]}#conflict:{digest[:16]}"
        again = _find(work, partner, channel, conflict_id)
        if again is not None:
            return InboxOutcome(again.id, again.status, again.response, duplicate=True)
        first = work.session.get(InboxMessage, existing.id)
        assert first is not None
        response = render_conflict(first) if render_conflict else None
        message_id = _insert(work, partner, channel, conflict_id, digest, raw, message_type)
        _settle(
            work,
            message_id,
            InboxStatus.conflict,
            response,
            error=f"external id {external_id} was already used for different content (message {existing.id})",
        )
        return InboxOutcome(message_id, InboxStatus.conflict, response)

    message_id = _insert(work, partner, channel, external_id, digest, raw, message_type)
    done = _interpret(work, message_id, interpret, render_error, partner, channel, message_type, savepoint=True)
    _settle(
        work,
        message_id,
        done.status,
        done.response,
        error=done.failure,
        order_id=done.order_id,
        message_type=done.message_type,
    )
    _report(done, message_id, partner, channel)
    return InboxOutcome(message_id, done.status, done.response, error=done.error)


class _AlreadyStored(Exception):
    """Internal: the fast path found the external id already stored."""


@dataclass(frozen=True)
class _Done:
    status: InboxStatus
    response: bytes | None
    message_type: str | None
    order_id: str | None = None
    error: HubError | None = None
    failure: str | None = None  # what is recorded in the row's error column
    crash: Exception | None = None  # a bug in a mapping or the core (logged once the message is stored)


def _interpret(
    work: Work,
    message_id: str,
    interpret: Interpret,
    render_error: RenderError,
    partner: str,
    channel: str,
    message_type: str | None,
    *,
    savepoint: bool = False,
) -> _Done:
    """Run the adapter's interpretation; a refusal or a crash becomes the message's status.

    A uniqueness violation is not a crash: another transaction (another writer thread or process)
    created the same identity (a placer number, a patient identifier) between this one's look and
    its insert. The interpretation runs once more in a fresh savepoint; on PostgreSQL each statement
    of a READ COMMITTED transaction sees what has committed since, so the second run finds the other
    record and answers as it would have had the messages come one after the other. A second
    violation is answered as a conflict."""
    retries = 1 if savepoint else 0
    while True:
        try:
            with work.attempt(savepoint=savepoint):
                result = interpret(work, message_id)
            return _Done(result.status, result.response, result.message_type or message_type, result.order_id)
        except HubError as exc:
            return _rejected(exc, render_error, message_type)
        except IntegrityError as exc:
            if retries > 0:
                retries -= 1
                continue
            return _rejected(duplicate_conflict(exc), render_error, message_type)
        except Exception as exc:  # a bug in a mapping or the core: keep the message, answer "retry later"
            failure = f"internal error: {type(exc).__name__}"
            return _Done(InboxStatus.failed, render_error(None, exc), message_type, failure=failure, crash=exc)


def _rejected(exc: HubError, render_error: RenderError, message_type: str | None) -> _Done:
    return _Done(InboxStatus.rejected, render_error(exc, exc), message_type, error=exc, failure=exc.message[:2000])


def _report(done: _Done, message_id: str, partner: str, channel: str) -> None:
    """Log a crash under the id of the message as stored (a repeat found by the fast path's insert
    is answered from the stored message; its interpretation left nothing to report)."""
    if done.crash is not None:
        log.error(
            "inbox message %s from %s/%s failed: %s",
            message_id,
            partner,
            channel,
            type(done.crash).__name__,
            exc_info=done.crash,
        )


@dataclass(frozen=True)
class _Stored:
    id: str
    content_hash: str
    status: InboxStatus
    response: bytes | None


def _find(work: Work, partner: str, channel: str, external_id: str) -> _Stored | None:
    row = select_one(
        work.session,
        _T,
        ("id", "content_hash", "status", "response"),
        {"partner": partner, "channel": channel, "external_id": external_id},
    )
    if row is None:
        return None
    response = row[3]
    return _Stored(str(row[0]), str(row[1]), InboxStatus(row[2]), None if response is None else bytes(response))


# Hot-path statements on the Core table (built once).
_T = table_of(InboxMessage)
_UNIQUE = ("partner", "channel", "external_id")
_SETTLE = (
    _T.update()
    .where(_T.c.id == bindparam("i"))
    .values(
        status=bindparam("s"),
        response=bindparam("r"),
        handled_at=bindparam("h"),
        error=bindparam("x"),
        order_id=bindparam("o"),
        message_type=bindparam("m"),
    )
)


def _insert(
    work: Work, partner: str, channel: str, external_id: str, digest: str, raw: bytes, message_type: str | None
) -> str:
    """Insert a message as ``received`` (its interpretation settles it)."""
    message_id = uuid7()
    done = _Done(InboxStatus.received, None, message_type)
    insert_rows(work.session, _T, [_row(work, partner, channel, external_id, digest, raw, message_id, done)])
    return message_id


def _row(
    work: Work, partner: str, channel: str, external_id: str, digest: str, raw: bytes, message_id: str, done: _Done
) -> dict[str, object]:
    return {
        "id": message_id,
        "partner": partner,
        "channel": channel,
        "external_id": external_id,
        "content_hash": digest,
        "raw": raw,
        "message_type": storable(done.message_type)[:64] if done.message_type else None,
        "received_at": work.now,
        "status": done.status.value,
        "response": done.response,
        "error": storable(done.failure) if done.failure else None,
        "order_id": done.order_id,
        "handled_at": work.now if done.status is not InboxStatus.received else None,
    }


def _settle(
    work: Work,
    message_id: str,
    status: InboxStatus,
    response: bytes | None,
    *,
    error: str | None = None,
    order_id: str | None = None,
    message_type: str | None = None,
) -> None:
    work.session.connection().execute(
        _SETTLE,
        {
            "i": message_id,
            "s": status.value,
            "r": response,
            "h": work.now,
            "x": storable(error) if error else None,
            "o": order_id,
            "m": storable(message_type)[:64] if message_type else None,
        },
    )


def set_status(work: Work, message_id: str, status: InboxStatus, reason: str) -> None:
    """Operator actions (quarantine, replay bookkeeping); audited."""
    row = work.session.get(InboxMessage, message_id)
    if row is None:
        from hub.errors import NotFound

        raise NotFound(f"inbox message {message_id} is not known")
    old = row.status
    work.session.execute(update(InboxMessage).where(InboxMessage.id == message_id).values(status=status.value))
    work.audit("update", "InboxMessage", message_id, old={"status": old}, new={"status": status.value}, reason=reason)


def settle(
    work: Work, message_id: str, status: InboxStatus, *, error: str | None = None, order_id: str | None = None
) -> None:
    """Record how a message accepted earlier (status ``received``) was finally processed, when its
    processing continued from the bus (courier webhooks: acknowledged at receipt, handled later)."""
    values: dict[str, object] = {"status": status.value, "handled_at": work.now}
    if error is not None:
        values["error"] = error[:2000]
    if order_id is not None:
        values["order_id"] = order_id
    work.session.execute(update(InboxMessage).where(InboxMessage.id == message_id).values(**values))
