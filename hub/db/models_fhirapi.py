"""Tables of the FHIR API (issue 4): who created which resource, conditional-create keys, SMART
assertion ids seen, and the Subscription delivery log. Migration: ``0003``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hub.db.models import Base, ResourceVersion
from hub.db.types import UTCDateTime

# Type-level _history (newest first, optionally _since) reads resource_version by type and time.
Index("ix_resource_version_type_updated", ResourceVersion.resource_type, ResourceVersion.last_updated)


class ResourceOwner(Base):
    """The partner that created a resource through the FHIR API. Partner isolation lets a partner
    see what it created, besides what belongs to the orders it takes part in."""

    __tablename__ = "fhir_resource_owner"
    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    partner_id: Mapped[str] = mapped_column(String(64))
    __table_args__ = (Index("ix_fhir_resource_owner_partner", "partner_id", "resource_type"),)


class ConditionalKey(Base):
    """One row per (caller scope, type, normalised If-None-Exist criteria). Its primary key is what
    makes concurrent identical conditional creates produce exactly one resource."""

    __tablename__ = "fhir_conditional_key"
    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    criteria_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    criteria: Mapped[str] = mapped_column(Text)
    resource_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SmartAssertion(Base):
    """``jti`` of every accepted client assertion, kept until it expires: a replay hits the key."""

    __tablename__ = "smart_assertion"
    client_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class SubscriptionDelivery(Base):
    """One notification owed to one Subscription for one event. Attempts are in
    ``subscription_attempt``; ``status``: pending | delivered | failed | skipped."""

    __tablename__ = "subscription_delivery"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(64))
    partner_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[str | None] = mapped_column(String(64))
    focus: Mapped[str] = mapped_column(String(160))  # "Type/id" of the resource notified about
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (
        UniqueConstraint("subscription_id", "event_id", "focus"),
        Index("ix_subscription_delivery_due", "status", "next_attempt_at"),
    )


class SubscriptionAttempt(Base):
    """Every delivery attempt: when, how long, what came back (truncated; no bodies we sent)."""

    __tablename__ = "subscription_attempt"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(36), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
