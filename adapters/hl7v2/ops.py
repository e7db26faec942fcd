"""Operator tools over the HL7 v2 inbox and outbound queue (``cgt-hub messages …``).

Ids: an inbox message is its uuid; an outbound message is ``out:<number>``.

* ``list`` — newest first, filtered by direction, status, partner, time (``since``) and inbox
  channel (HL7 v2 by default; FHIR requests and courier deliveries are listed and shown, never
  replayed).
* ``show`` — the message with PHI masked (every field of a segment not on the allow-list below,
  and the person fields of those that are), its answer and, for outbound, every attempt.
  ``--unmasked`` prints it as received; that read is written to the audit trail.
* ``replay`` — inbox: interpret a failed, rejected or quarantined message again (a handled one
  would double its effects, so it is refused); the stored answer is replaced, so a resend from
  the partner now gets the new one. Outbound: send a dead (or quarantined) message again, as it
  was built (same bytes, same MSH-10), or with ``rebuild`` built again from its snapshot with the
  partner's current profile and mappings under a new control id (the old one in the audit trail).
* ``quarantine`` — set a message aside with a reason (the sender skips a quarantined outbound
  message; a quarantined inbox message is only replayed on purpose).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from adapters.hl7v2.ack import AckContext, Outcome, policy_for, render
from adapters.hl7v2.build import BuildError, build
from adapters.hl7v2.errors import Rejected
from adapters.hl7v2.interpret import Interpreter
from adapters.hl7v2.mapping import mapping_root
from adapters.hl7v2.outbound import outbound_channel, rebuilt_snapshot
from adapters.hl7v2.routing import ADAPTER, Route, Router
from adapters.hl7v2.tokenizer import ParseError, parse_all
from hub import canonical
from hub.context import HubContext
from hub.db.models import InboxMessage
from hub.db.models_hl7v2 import Hl7v2Outbound, Hl7v2OutboundAttempt
from hub.db.uow import Work
from hub.errors import GuardFailed, HubError, NotFound, ValidationFailed
from hub.messaging.inbox import InboxStatus

# Segments whose fields carry no person data; every other segment is masked field by field.
CLEAR_SEGMENTS = {"MSH", "MSA", "ERR", "BHS", "BTS", "FHS", "FTS", "EVN", "SFT"}
# Fields kept in the clear in otherwise masked segments (order, code and status fields).
CLEAR_FIELDS = {
    "ORC": {1, 2, 3, 5},
    "OBR": {1, 2, 3, 4, 25},
    "OBX": {1, 2, 3, 6, 11},
    "SCH": {1, 2, 26, 27},
    "ZCT": {1, 2, 3, 4, 5, 6},
    "PID": {1},
    "PV1": {1, 2},
    "AIS": {1, 3},
    "RGS": {1},
    "TQ1": {1},
    "NTE": {1},
}
RESERVED = ("MSH", "BHS", "FHS")
MASK = "***"


@dataclass(frozen=True)
class Row:
    id: str
    direction: str
    at: datetime
    partner: str
    message_type: str
    external_id: str
    status: str
    detail: str


def mask(raw: bytes) -> str:
    """The message as text, person data replaced by ``***`` (structure and codes kept)."""
    try:
        tx = parse_all(raw)
    except ParseError:
        return f"<{len(raw)} bytes, not an HL7 v2 message; use --unmasked to see them>"
    lines = []
    fs = tx.enc.field
    for msg in tx.messages:
        for seg in msg.segments:
            sid = seg[0]
            if sid in CLEAR_SEGMENTS:
                lines.append(msg.to_er7().split("\r", 1)[0] if sid == "MSH" else fs.join(seg))
                continue
            keep = CLEAR_FIELDS.get(sid, set())
            fields = [v if (i in keep or not v) else MASK for i, v in enumerate(seg[1:], 1)]
            lines.append(fs.join([sid, *fields]))
    return "\n".join(lines)


def _lines(raw: bytes | None) -> str:
    if not raw:
        return ""
    return raw.replace(b"\x1c\r\x0b", b"\n").decode("utf-8", errors="replace").replace("\r", "\n").strip()


DIRECTIONS = ("all", "in", "out")
# Inbox channels besides HL7 v2 whose messages the operator may list and show (not replay: their
# sender had its answer at once, and sends a corrected request itself).
OTHER_CHANNELS = ("fhir-rest", "courier-webhook", "courier-telemetry")
CHANNELS = (ADAPTER, *OTHER_CHANNELS, "all")


def list_messages(
    ctx: HubContext,
    *,
    direction: str = "all",
    status: str | None = None,
    partner: str | None = None,
    limit: int = 50,
    since: datetime | None = None,
    channel: str = ADAPTER,
) -> list[Row]:
    """Newest first. ``channel`` picks the inbox's channel (``all`` for every one); outbound
    messages are HL7 v2 only, so a channel other than HL7 v2 (or ``all``) lists inbound only."""
    if direction not in DIRECTIONS:
        raise ValidationFailed(f"--direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    if channel not in CHANNELS:
        raise ValidationFailed(f"--channel must be one of {', '.join(CHANNELS)}, not {channel!r}")

    def read(session: Any) -> list[Row]:
        rows: list[Row] = []
        if direction in ("all", "in"):
            stmt = select(InboxMessage)
            if channel != "all":
                stmt = stmt.where(InboxMessage.channel == channel)
            if status:
                stmt = stmt.where(InboxMessage.status == status)
            if partner:
                stmt = stmt.where(InboxMessage.partner == partner)
            if since is not None:
                stmt = stmt.where(InboxMessage.received_at >= since)
            for m in session.scalars(stmt.order_by(InboxMessage.received_at.desc()).limit(limit)):
                rows.append(
                    Row(
                        m.id,
                        "in",
                        m.received_at,
                        m.partner,
                        m.message_type or "",
                        m.external_id,
                        m.status,
                        (m.error or "")[:80],
                    )
                )
        if direction in ("all", "out") and channel in (ADAPTER, "all"):
            stmt2 = select(Hl7v2Outbound)
            if status:
                stmt2 = stmt2.where(Hl7v2Outbound.status == status)
            if partner:
                stmt2 = stmt2.where(Hl7v2Outbound.partner == partner)
            if since is not None:
                stmt2 = stmt2.where(Hl7v2Outbound.created_at >= since)
            for o in session.scalars(stmt2.order_by(Hl7v2Outbound.id.desc()).limit(limit)):
                detail = f"{o.attempts} attempt(s)" + (f", {o.last_error[:60]}" if o.last_error else "")
                rows.append(
                    Row(f"out:{o.id}", "out", o.created_at, o.partner, o.message_type, o.control_id, o.status, detail)
                )
        rows.sort(key=lambda r: r.at, reverse=True)
        return rows[:limit]

    return ctx.store.read(read)


# Outbound ids are a BIGINT column: a larger number cannot name one (and PostgreSQL refuses to
# compare with it, SQLite's driver cannot even bind it).
_MAX_OUTBOUND_ID = 2**63 - 1


def _outbound_id(key: str) -> int | None:
    if key.startswith("out:") and key[4:].isascii() and key[4:].isdigit():
        number = int(key[4:])
        if number > _MAX_OUTBOUND_ID:
            raise NotFound(f"outbound message {key[:40]} is not known (ids are at most {_MAX_OUTBOUND_ID})")
        return number
    return None


def show(ctx: HubContext, key: str, *, unmasked: bool = False, operator: str = "cli") -> str:
    """The message as text. An unmasked read is written to the audit trail before it is shown,
    and only for a message that exists (an unknown id is no read of PHI, and may be too long for
    the trail)."""
    text = _render(ctx, key, unmasked=unmasked)
    if unmasked:
        out_id = _outbound_id(key)
        entity = ("Hl7v2Outbound", str(out_id)) if out_id is not None else ("InboxMessage", key)
        ctx.store.run(
            lambda w: w.audit("read", entity[0], entity[1], reason="operator viewed the message unmasked"),
            actor=operator,
        )
    return text


def _render(ctx: HubContext, key: str, *, unmasked: bool) -> str:
    out_id = _outbound_id(key)
    if out_id is not None:

        def read_out(session: Any) -> str:
            o = session.get(Hl7v2Outbound, out_id)
            if o is None:
                raise NotFound(f"outbound message {key} is not known")
            attempts = session.scalars(
                select(Hl7v2OutboundAttempt)
                .where(Hl7v2OutboundAttempt.outbound_id == o.id)
                .order_by(Hl7v2OutboundAttempt.id)  # in the order they happened, replays included
            ).all()
            head = [
                f"outbound {key}  {o.message_type}  to {o.partner} ({o.endpoint})",
                f"control id {o.control_id}  event {o.event_type} {o.event_id}  order {o.order_id}",
                f"status {o.status}  attempts {o.attempts}  next {o.next_attempt_at:%Y-%m-%d %H:%M:%S}  "
                f"ack {o.ack_code or '-'}",
            ]
            body = o.payload
            text = (_lines(body) if unmasked else mask(body)) if body else "(not built yet)"
            tries = [
                f"  #{a.attempt} {a.started_at:%Y-%m-%d %H:%M:%S} {a.outcome:<13} {a.duration_ms} ms"
                + (f"  {a.error[:100]}" if a.error else "")
                for a in attempts
            ]
            return "\n".join([*head, "", text, "", "attempts:", *(tries or ["  none"])])

        return ctx.store.read(read_out)

    def read_in(session: Any) -> str:
        m = session.get(InboxMessage, key)
        if m is None or m.channel not in (ADAPTER, *OTHER_CHANNELS):
            raise NotFound(f"inbox message {key} is not known")
        if m.channel != ADAPTER:
            return _render_other(m, unmasked=unmasked)
        head = _inbox_head(m, f"{m.message_type or '?'}", "control id")
        text = _lines(m.raw) if unmasked else mask(m.raw)
        return "\n".join([*head, "", text, "", "answered:", _lines(m.response) or "(nothing)"])

    return ctx.store.read(read_in)


def _inbox_head(m: InboxMessage, what: str, id_name: str) -> list[str]:
    """The lines that head an inbox message: what it is, from whom, when, its status and why."""
    head = [
        f"inbox {m.id}  {what}  from {m.partner}",
        f"{id_name} {m.external_id}  received {m.received_at:%Y-%m-%d %H:%M:%S}  status {m.status}"
        + (f"  order {m.order_id}" if m.order_id else ""),
        f"sha256 {m.content_hash}",
    ]
    if m.error:
        head.append(f"error: {m.error}")
    return head


def _render_other(m: InboxMessage, *, unmasked: bool) -> str:
    """A FHIR request or a courier delivery: who, when, status and why; the request and the answer
    (which may carry PHI and are not masked field by field) only with ``--unmasked``."""
    head = _inbox_head(m, f"{m.channel}  {m.message_type or '?'}", "external id")
    if not unmasked:
        where = _answer_issues(m.response) if m.channel == "fhir-rest" else []
        note = f"({len(m.raw)} bytes; --unmasked shows the request and the answer in full)"
        return "\n".join([*head, *where, "", note])
    answer = (m.response or b"(nothing)").decode("utf-8", errors="replace")
    return "\n".join([*head, "", m.raw.decode("utf-8", errors="replace"), "", "answered:", answer])


def _answer_issues(response: bytes | None) -> list[str]:
    """The HTTP status and, per OperationOutcome issue, its severity, code and FHIRPath: where the
    request failed, without the diagnostics text (which may quote the request's values)."""
    if not response:
        return []
    try:
        reply = json.loads(response)
        outcome = json.loads(reply.get("body") or "null")
    except (ValueError, AttributeError, TypeError):
        return []
    lines = [f"answered: HTTP {reply.get('status')}"]
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    for issue in issues if isinstance(issues, list) else []:
        if isinstance(issue, dict):
            paths = issue.get("expression") or ["-"]
            lines.append(f"  {issue.get('severity', '?')} {issue.get('code', '?')} at {', '.join(map(str, paths))}")
    return lines


def replay_order(ctx: HubContext, keys: list[str]) -> list[str]:
    """The keys in the order their messages happened: inbox messages by receipt, then outbound
    ones by number (the order the sender sends them), so that a batch replayed from ``messages
    list`` (newest first) does not deliver or apply them backwards. Unknown keys keep their place
    at the end, to be reported."""
    numbers: dict[str, int] = {}
    inbox: list[str] = []
    unknown: list[str] = []
    for key in keys:
        try:
            number = _outbound_id(key)
        except NotFound:  # beyond any outbound id: replay says so
            unknown.append(key)
            continue
        if number is None:
            inbox.append(key)
        else:
            numbers[key] = number

    def read(session: Any) -> dict[str, datetime]:
        found = session.execute(
            select(InboxMessage.id, InboxMessage.received_at).where(InboxMessage.id.in_([k[:36] for k in inbox]))
        )
        return {i: at for i, at in found}

    received = ctx.store.read(read) if inbox else {}
    known_in = sorted((k for k in inbox if k in received), key=lambda k: (received[k], k))
    outbound = sorted(numbers, key=lambda k: numbers[k])
    unknown += [k for k in inbox if k not in received]
    return list(dict.fromkeys([*known_in, *outbound, *unknown]))


def quarantine(ctx: HubContext, key: str, reason: str, *, operator: str = "cli") -> str:
    out_id = _outbound_id(key)

    def job(work: Work) -> str:
        if out_id is not None:
            o = work.session.get(Hl7v2Outbound, out_id, with_for_update=True)
            if o is None:
                raise NotFound(f"outbound message {key} is not known")
            if o.status == "delivered":
                raise GuardFailed(f"outbound message {key} was already delivered")
            old = o.status
            o.status = "quarantined"
            work.audit(
                "update", "Hl7v2Outbound", str(o.id), old={"status": old}, new={"status": o.status}, reason=reason
            )
            return o.status
        m = work.session.get(InboxMessage, key)
        if m is None or m.channel != ADAPTER:
            raise NotFound(f"inbox message {key} is not known")
        old = m.status
        work.session.execute(
            update(InboxMessage).where(InboxMessage.id == key).values(status=InboxStatus.quarantined.value)
        )
        work.audit("update", "InboxMessage", key, old={"status": old}, new={"status": "quarantined"}, reason=reason)
        return "quarantined"

    return ctx.store.run(job, actor=operator)


def replay(
    ctx: HubContext, key: str, *, operator: str = "cli", reason: str = "operator replay", rebuild: bool = False
) -> str:
    """Replay one message. An outbound one is resent as it was built (same bytes, same MSH-10),
    or with ``rebuild`` built again from its snapshot under the partner's current profile and
    mappings, with a new control id (the old one is kept in the audit trail)."""
    out_id = _outbound_id(key)
    if rebuild and out_id is None:
        raise GuardFailed(
            f"{key[:40]}: --rebuild is for outbound messages (out:<n>); an inbox message is always"
            " interpreted again from the bytes the partner sent"
        )
    if out_id is not None and rebuild:
        return ctx.store.run(_rebuild(ctx, key, out_id, reason), actor=operator)
    if out_id is not None:

        def requeue(work: Work) -> str:
            o = work.session.get(Hl7v2Outbound, out_id, with_for_update=True)
            if o is None:
                raise NotFound(f"outbound message {key} is not known")
            if o.status not in ("dead", "quarantined"):
                raise GuardFailed(f"outbound message {key} is {o.status}; only dead or quarantined ones are replayed")
            old = o.status
            o.status, o.attempts, o.next_attempt_at, o.last_error = "pending", 0, work.now, None
            work.audit(
                "update", "Hl7v2Outbound", str(o.id), old={"status": old}, new={"status": "pending"}, reason=reason
            )
            return "pending (the sender delivers it next)"

        return ctx.store.run(requeue, actor=operator)

    router = Router(ctx.partners, mapping_root(ctx.settings.mappings_dir))

    def job(work: Work) -> str:
        m = work.session.get(InboxMessage, key, with_for_update=True)
        if m is not None and m.channel in OTHER_CHANNELS:
            raise GuardFailed(
                f"inbox message {key} came over {m.channel}: its sender had the answer at once and sends a"
                " corrected request itself; only HL7 v2 messages are replayed"
            )
        if m is None or m.channel != ADAPTER:
            raise NotFound(f"inbox message {key} is not known")
        if m.status not in (InboxStatus.failed.value, InboxStatus.rejected.value, InboxStatus.quarantined.value):
            raise GuardFailed(f"inbox message {key} is {m.status}; replaying it would repeat its effects")
        route = _route_for(router, m.partner)
        try:
            tx = parse_all(m.raw)
        except ParseError as exc:
            raise GuardFailed(
                f"inbox message {key} is not a readable HL7 v2 message ({exc}); replaying it cannot change"
                " its answer: the sender must send it corrected"
            ) from None
        msg = tx.messages[0]
        context = AckContext.of(msg)
        policy = policy_for(msg, route.ack_mode)
        old = m.status
        try:
            with work.attempt():
                result = Interpreter(
                    work, ctx.partners, route, fin=ctx.settings.coi_fin, production=ctx.settings.env == "production"
                ).run(msg)
            m.status = result.status.value
            m.order_id = result.order_id
            m.error = None
            m.response = render(context, policy, Outcome.accepted, work.now)
        except HubError as exc:
            m.status = InboxStatus.rejected.value
            m.error = exc.message[:2000]
            outcome = Outcome.rejected if isinstance(exc, Rejected) else Outcome.error
            m.response = render(context, policy, outcome, work.now, error=exc)
        m.handled_at = work.now
        work.session.flush()
        work.audit("update", "InboxMessage", key, old={"status": old}, new={"status": m.status}, reason=reason)
        return m.status + (f": {m.error}" if m.error else "")

    return ctx.store.run(job, actor=operator)


def _rebuild(ctx: HubContext, key: str, out_id: int, reason: str) -> Callable[[Work], str]:
    def job(work: Work) -> str:
        o = work.session.get(Hl7v2Outbound, out_id, with_for_update=True)
        if o is None:
            raise NotFound(f"outbound message {key} is not known")
        if o.status not in ("dead", "quarantined"):
            raise GuardFailed(f"outbound message {key} is {o.status}; only dead or quarantined ones are replayed")
        profile = ctx.partners.get(o.partner)
        channel = outbound_channel(profile) if profile is not None else None
        if profile is None or channel is None:
            raise GuardFailed(f"partner {o.partner} has no outbound HL7 v2 channel now; {key} cannot be rebuilt")
        snap = rebuilt_snapshot(canonical.loads(o.snapshot), profile, channel, mapping_root(ctx.settings.mappings_dir))
        try:
            payload = build(snap)
        except BuildError as exc:
            raise GuardFailed(f"outbound message {key} cannot be rebuilt ({exc}); it stays {o.status}") from None
        old = {"status": o.status, "control_id": o.control_id, "message_type": o.message_type}
        if o.payload is not None:
            old["sha256"] = hashlib.sha256(o.payload).hexdigest()
        o.control_id, o.message_type, o.endpoint = snap["control_id"], snap["message_type"], str(channel.endpoint)
        o.snapshot, o.payload = canonical.dumps(snap), payload
        o.status, o.attempts, o.next_attempt_at, o.last_error, o.ack_code = "pending", 0, work.now, None, None
        new = {"status": "pending", "control_id": o.control_id, "message_type": o.message_type}
        new["sha256"] = hashlib.sha256(payload).hexdigest()
        work.audit(
            "update",
            "Hl7v2Outbound",
            str(o.id),
            old=old,
            new=new,
            reason=f"{reason}: rebuilt, control id {old['control_id']} replaced by {o.control_id}",
        )
        was = old["control_id"]
        return f"pending, rebuilt as {o.message_type} {o.control_id} (was {was}; the sender delivers it next)"

    return job


def _route_for(router: Router, partner: str) -> Route:
    for route in router.routes:
        if route.partner == partner:
            return route
    raise GuardFailed(f"partner {partner!r} has no inbound HL7 v2 channel; the message cannot be replayed")
