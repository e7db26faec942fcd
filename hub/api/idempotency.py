"""Every FHIR write enters through the inbox, and ``Idempotency-Key`` rides on it.

The raw request (request line, content type, body) is stored by ``hub.messaging.inbox.receive``
before it is interpreted; the exact HTTP answer (status, headers, body) is stored with it. With an
``Idempotency-Key`` (IETF draft "The Idempotency-Key HTTP Header Field") the inbox's external id is
the key, scoped to the partner:

* same key, same request (method, path and body: the fingerprint is the hash of the raw request)
  → the original answer, byte for byte, nothing changes (``Idempotent-Replayed: true``) — if the
  caller's token still has the scopes the request needs (``authorize``): the stored answer holds
  the resource, and a key must not let a token read what it may not;
* same key, another request → 422;
* same key while the first request is still being processed → 409 (tracked in this process; across
  processes the inbox's unique key makes the second wait for the first and then answer like a
  repeat, or 409 if it lost the race).

Without a key each request is its own inbox message (a fresh external id).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from hub import canonical
from hub.api.outcomes import FHIR_JSON_UTF8, operation_outcome, outcome_for
from hub.db.uow import Work
from hub.errors import Conflict, HubError, Issue
from hub.messaging.inbox import InboxStatus, Interpretation, receive

CHANNEL = "fhir-rest"
MAX_KEY = 200


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    order_id: str | None = None

    def to_bytes(self) -> bytes:
        return canonical.dumpb(
            {"status": self.status, "headers": self.headers, "body": None if self.body is None else self.body.decode()}
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Reply:
        doc = canonical.loads(data)
        body = doc.get("body")
        return cls(int(doc["status"]), dict(doc.get("headers") or {}), None if body is None else body.encode())


def error_reply(error: HubError | None) -> Reply:
    if error is None:
        body = operation_outcome([Issue("internal error; the request was kept and can be replayed")], "exception")
        return Reply(500, {"Content-Type": FHIR_JSON_UTF8}, canonical.dumpb(body))
    headers = {"Content-Type": FHIR_JSON_UTF8}
    if error.retryable:
        headers["Retry-After"] = "5"
    return Reply(error.status, headers, canonical.dumpb(outcome_for(error)))


def conflict_reply() -> Reply:
    body = operation_outcome(
        [Issue("this Idempotency-Key was already used for a different request", "Idempotency-Key")], "conflict"
    )
    return Reply(422, {"Content-Type": FHIR_JSON_UTF8}, canonical.dumpb(body))


class InFlight:
    """Idempotency keys being processed in this process right now."""

    def __init__(self) -> None:
        self._keys: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @contextmanager
    def claim(self, partner: str, key: str | None) -> Iterator[None]:
        if key is None:
            yield
            return
        item = (partner, key)
        with self._lock:
            if item in self._keys:
                raise Conflict(
                    "a request with this Idempotency-Key is still being processed; retry later",
                    [Issue("request in flight", "Idempotency-Key")],
                )
            self._keys.add(item)
        try:
            yield
        finally:
            with self._lock:
                self._keys.discard(item)


def external_id(key: str | None) -> str:
    if key is None:
        return f"req:{uuid.uuid4()}"
    key = key.strip()
    if not key or len(key) > MAX_KEY:
        raise HubError(
            "Idempotency-Key must be 1-200 characters",
            [Issue("bad Idempotency-Key", "Idempotency-Key")],
            status=400,
            fhir_code="invalid",
        )
    return f"idem:{key}"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() or c in "\t\n" else repr(c)[1:-1] for c in text)


def raw_request(method: str, path: str, content_type: str, body: bytes) -> bytes:
    return f"{method} {path} HTTP/1.1\r\ncontent-type: {content_type}\r\n\r\n".encode() + body


def inbound_job(
    *,
    partner: str,
    external: str,
    raw: bytes,
    message_type: str,
    handle: Callable[[Work], Reply],
    authorize: Callable[[], None] | None = None,
) -> Callable[[Work], Reply]:
    """A unit-of-work job: store the request, run ``handle`` (nested), store and return the answer.
    ``authorize`` raises (Forbidden) when the caller may not have a stored answer replayed; a new
    request is authorised by ``handle`` itself, and its refusal is stored like any other answer."""

    def job(work: Work) -> Reply:
        def interpret(w: Work, message_id: str) -> Interpretation:
            try:
                reply = handle(w)
            except HubError as exc:
                # The message and issues are stored and echoed: no control characters from the request.
                exc.message = _printable(exc.message)
                exc.issues = [
                    Issue(_printable(i.message), i.location and _printable(i.location), i.severity, i.code)
                    for i in exc.issues
                ]
                raise
            return Interpretation(InboxStatus.handled, reply.to_bytes(), reply.order_id, message_type)

        outcome = receive(
            work,
            partner=partner,
            channel=CHANNEL,
            external_id=external,
            raw=raw,
            interpret=interpret,
            render_error=lambda error, _exc: error_reply(error).to_bytes(),
            render_conflict=lambda _existing: conflict_reply().to_bytes(),
            message_type=message_type,
        )
        reply = Reply.from_bytes(outcome.response) if outcome.response else error_reply(None)
        if outcome.duplicate:
            if authorize is not None:
                authorize()
            reply.headers["Idempotent-Replayed"] = "true"
        return reply

    return job
