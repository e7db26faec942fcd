"""Tables of the HL7 v2 adapter: outbound messages to partners and every delivery attempt."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hub.db.models import Base, BigId
from hub.db.types import Bytes, UTCDateTime


class Hl7v2Outbound(Base):
    """One message the hub owes a partner. Written by the outbound consumer in the same
    transaction that records the event as handled; sent by the MLLP sender in ``id`` order per
    partner; retried with backoff; ``dead`` after the last attempt (operators can replay it)."""

    __tablename__ = "hl7v2_outbound"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    control_id: Mapped[str] = mapped_column(String(20), unique=True)
    partner: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(255))
    event_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[str | None] = mapped_column(String(64), index=True)
    message_type: Mapped[str] = mapped_column(String(16))
    snapshot: Mapped[str] = mapped_column(Text)  # canonical JSON the message is built from
    payload: Mapped[bytes | None] = mapped_column(Bytes)  # the exact bytes sent (built once)
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ack_code: Mapped[str | None] = mapped_column(String(2))
    last_error: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (
        UniqueConstraint("partner", "event_id"),
        Index("ix_hl7v2_outbound_queue", "partner", "status", "id"),
    )


class Hl7v2OutboundAttempt(Base):
    """Every attempt to deliver an outbound message: when, how long, what came back."""

    __tablename__ = "hl7v2_outbound_attempt"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    outbound_id: Mapped[int] = mapped_column(ForeignKey("hl7v2_outbound.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # AA AE AR CA CE CR timeout connect-error io-error bad-ack
    ack: Mapped[bytes | None] = mapped_column(Bytes)  # the acknowledgment received (first 4 KiB)
    error: Mapped[str | None] = mapped_column(Text)
