"""Acknowledgments: original mode (AA/AE/AR) and enhanced mode (CA/CE/CR commit ACK, then an
application ACK when MSH-16 asks for it), with ERR segments that name the location and an HL7
table 0357 code.

Which mode: MSH-15/MSH-16 of the message win; when both are empty the channel's ``ack_mode``
decides. Enhanced by profile with both fields empty means MSH-15 ``AL`` and MSH-16 ``ER``: every
message gets a commit ACK, and an application ACK follows only when the hub refused it (so an
error is never silent). In enhanced mode an empty MSH-15 or MSH-16 next to a valued one means
``AL``. ``NE`` is honoured: a sender that asks for no acknowledgment gets none.

Both ACKs of enhanced mode travel on the same connection, commit ACK first. The bytes of all the
ACKs for one message are rendered once, inside the unit of work, and stored with the message in the
inbox as one payload whose ACKs are separated by the MLLP frame boundary (``FS CR VT``), so the
stored bytes framed once are exactly what went on the wire, and a duplicate gets them again.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

from adapters.hl7v2.tokenizer import DEFAULT_ENCODING, Encoding, Message, escape
from hub.errors import HubError, Issue

FRAME_BOUNDARY = b"\x1c\x0d\x0b"
HUB_APPLICATION = "CGTHUB"
ERROR_TEXT = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}
LOCATION = re.compile(r"^([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?(?:-(\d+)(?:\.(\d+))?(?:\.(\d+))?)?$")


class Outcome(StrEnum):
    accepted = "accepted"  # stored and acted on (or deliberately ignored)
    error = "error"  # stored; the hub refused it (partner's mistake, a guard) or failed
    rejected = "rejected"  # not acceptable at all: unparsable, unsupported type, reused control id
    unavailable = "unavailable"  # not stored: the store could not commit


@dataclass(frozen=True)
class AckPolicy:
    enhanced: bool
    accept: str = ""  # MSH-15: AL | NE | ER | SU
    application: str = ""  # MSH-16

    @staticmethod
    def _wants(kind: str, ok: bool) -> bool:
        return kind == "AL" or (kind == "SU" and ok) or (kind == "ER" and not ok)


def _answerable(enc: Encoding) -> Encoding:
    """The message's encoding characters for its ACK, with a component separator: MSA and ERR
    need one, and a message may declare none (MSH-2 ``~\\&``). Then the default ``^``, unless the
    message uses ``^`` for something else (then the standard set)."""
    if enc.component:
        return enc
    used = {enc.field, enc.repetition, enc.escape, enc.subcomponent, enc.truncation}
    return replace(enc, component="^") if "^" not in used else DEFAULT_ENCODING


ACK_TYPES = frozenset({"AL", "NE", "ER", "SU"})  # HL7 table 0155


def policy_for(msg: Message | None, default_mode: str) -> AckPolicy:
    accept = msg.accept_ack_type if msg is not None else ""
    application = msg.application_ack_type if msg is not None else ""
    if msg is not None and msg.message_code == "ACK" and not (accept or application):
        # An acknowledgment (a partner's application ACK to one of our messages) is not itself
        # acknowledged unless it asks to be (MSH-15/16): answering it invites an endless exchange.
        return AckPolicy(True, "NE", "NE")
    if accept or application:
        # A value outside table 0155 ("XX", "Y") is answered as AL: a sender that asked for
        # something must not be left waiting for an ACK that never comes.
        return AckPolicy(True, _ack_type(accept), _ack_type(application))
    if default_mode == "enhanced":
        return AckPolicy(True, "AL", "ER")
    return AckPolicy(False)


def _ack_type(value: str) -> str:
    value = value.strip().upper()
    return value if value in ACK_TYPES else "AL"


def hl7_timestamp(at: datetime) -> str:
    at = at.astimezone(UTC)
    return at.strftime("%Y%m%d%H%M%S") + f".{at.microsecond // 100:04d}+0000"


def new_control_id() -> str:
    return uuid.uuid4().hex[:20].upper()


@dataclass(frozen=True)
class AckContext:
    """What an ACK echoes from the message it answers (or safe defaults without one)."""

    control_id: str = ""
    trigger: str = ""
    version: str = "2.5"
    processing_id: str = "P"
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    charset_field: str = ""
    codec: str = "utf-8"
    enc: Encoding = DEFAULT_ENCODING

    @classmethod
    def of(cls, msg: Message | None) -> AckContext:
        if msg is None:
            return cls()
        version = msg.version or "2.5"
        return cls(
            control_id=msg.control_id,
            trigger=msg.trigger,
            version=version,
            processing_id=msg.processing_id or "P",
            sending_application=msg.msh(3),
            sending_facility=msg.msh(4),
            receiving_application=msg.msh(5),
            receiving_facility=msg.msh(6),
            charset_field=msg.msh(18),
            codec="utf-8" if msg.charset in ("ascii", "cp1252") else msg.charset,
            enc=_answerable(msg.enc),
        )

    @property
    def modern_err(self) -> bool:
        try:
            major, minor = (int(p) for p in [*self.version.split("."), "0"][:2])
        except ValueError:
            return True
        return (major, minor) >= (2, 5)


def _err_location(location: str | None, enc: Encoding) -> str:
    """``PID-3.4`` → ERL ``PID^1^3^1^4`` (segment, occurrence, field, repetition, component…)."""
    if not location:
        return ""
    m = LOCATION.match(location.strip())
    if not m:
        return ""
    seg, occ, fld, comp, sub = m.groups()
    parts = [seg, str(int(occ or 0) + 1)]
    if fld:
        parts += [fld, "1"]
        if comp:
            parts.append(comp)
            if sub:
                parts.append(sub)
    return enc.component.join(parts)


def _err_segments(ctx: AckContext, code: str, issues: list[Issue]) -> list[str]:
    enc = ctx.enc
    fs, cs, ss = enc.field, enc.component, enc.subcomponent or "&"
    out: list[str] = []
    for issue in issues or [Issue(ERROR_TEXT.get(code, "error"))]:
        text = escape(issue.message[:200], enc)
        loc = _err_location(issue.location, enc)
        name = escape(ERROR_TEXT.get(code, "Error"), enc)
        diagnostic = text if loc or not issue.location else escape(f"{issue.location}: {issue.message}"[:250], enc)
        if ctx.modern_err:
            severity = "W" if issue.severity == "warning" else "E"
            out.append(fs.join(["ERR", "", loc, cs.join([code, name, "HL70357"]), severity, "", "", "", diagnostic]))
        else:
            seg_loc = loc.split(cs)[:3] if loc else ["", "", ""]
            seg_loc += [""] * (3 - len(seg_loc))
            eld = cs.join([seg_loc[0], seg_loc[1], seg_loc[2], ss.join([code, name, "HL70357"])])
            out.append(fs.join(["ERR", eld]))
    return out


def _ack(ctx: AckContext, code: str, at: datetime, *, text: str = "", err_code: str = "", issues: list[Issue]) -> bytes:
    enc = ctx.enc
    fs, cs = enc.field, enc.component
    message_type = cs.join(["ACK", ctx.trigger, "ACK"]) if ctx.trigger else "ACK"
    msh = [
        "MSH",
        enc.msh2,
        ctx.receiving_application or HUB_APPLICATION,
        ctx.receiving_facility or HUB_APPLICATION,
        ctx.sending_application,
        ctx.sending_facility,
        hl7_timestamp(at),
        "",
        message_type,
        new_control_id(),
        ctx.processing_id or "P",
        ctx.version or "2.5",
        "",
        "",
        "NE",
        "NE",
    ]
    if ctx.charset_field:
        msh += ["", "", ctx.charset_field]
    segments = [fs.join(msh[:1]) + fs + fs.join(msh[1:])]
    msa = ["MSA", code, escape(ctx.control_id, enc)]
    if text:
        msa.append(escape(text[:80], enc))
    segments.append(fs.join(msa))
    if err_code:
        segments += _err_segments(ctx, err_code, issues)
    return ("\r".join(segments) + "\r").encode(ctx.codec, errors="replace")


def render(
    ctx: AckContext,
    policy: AckPolicy,
    outcome: Outcome,
    at: datetime,
    *,
    error: HubError | None = None,
    code: str = "",
) -> bytes:
    """The full answer for one message (zero, one or two ACKs joined by the frame boundary)."""
    issues = list(error.issues) if error is not None else []
    err_code = code or (error.hl7_code if error is not None else "")
    text = error.message if error is not None else ""
    if outcome is Outcome.unavailable:
        err_code, text = err_code or "207", text or "the hub could not store the message; send it again"
        issues = issues or [Issue(text)]
    acks: list[bytes] = []
    if not policy.enhanced:
        ack_code = {
            Outcome.accepted: "AA",
            Outcome.error: "AE",
            Outcome.rejected: "AR",
            Outcome.unavailable: "AE",
        }[outcome]
        if outcome is Outcome.accepted:
            return _ack(ctx, ack_code, at, issues=[])
        return _ack(ctx, ack_code, at, text=text, err_code=err_code or "207", issues=issues)
    ok = outcome is Outcome.accepted
    if outcome is Outcome.accepted or outcome is Outcome.error:
        if AckPolicy._wants(policy.accept, True):
            acks.append(_ack(ctx, "CA", at, issues=[]))
        if AckPolicy._wants(policy.application, ok):
            if ok:
                acks.append(_ack(ctx, "AA", at, issues=[]))
            else:
                acks.append(_ack(ctx, "AE", at, text=text, err_code=err_code or "207", issues=issues))
    else:
        commit = "CR" if outcome is Outcome.rejected else "CE"
        if AckPolicy._wants(policy.accept, False) or outcome is Outcome.unavailable:
            acks.append(_ack(ctx, commit, at, text=text, err_code=err_code or "207", issues=issues))
        elif outcome is Outcome.rejected and AckPolicy._wants(policy.application, False):
            # the sender wants no commit ACK but does want errors: tell it at the application level
            acks.append(_ack(ctx, "AR", at, text=text, err_code=err_code or "207", issues=issues))
    return FRAME_BOUNDARY.join(acks)


def split_acks(response: bytes) -> list[bytes]:
    return [a for a in response.split(FRAME_BOUNDARY) if a] if response else []


def ack_code_of(ack: bytes) -> str:
    """MSA-1 of an ACK (AA, AE, AR, CA, CE, CR) or '' if it is not an ACK."""
    for line in ack.replace(b"\n", b"\r").split(b"\r"):
        if line.startswith(b"MSA") and len(line) > 4:
            return line[4:].split(line[3:4], 1)[0].decode("latin-1").strip()
    return ""


def acked_control_id(ack: bytes) -> str:
    for line in ack.replace(b"\n", b"\r").split(b"\r"):
        if line.startswith(b"MSA") and len(line) > 4:
            fields = line.split(line[3:4])
            return fields[2].decode("latin-1").strip() if len(fields) > 2 else ""
    return ""
