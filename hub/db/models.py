"""All tables of the hub core. Migrations (``hub/db/migrations``) create exactly these.

Conventions: ids are text (uuid4 or FHIR ids); times are aware UTC (:class:`UTCDateTime`);
JSON that is hashed is stored as canonical text so its bytes never change on a round trip.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hub.db.types import Bytes, UTCDateTime

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite's INTEGER PRIMARY KEY is its rowid alias; BIGINT is needed on PostgreSQL.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# --------------------------------------------------------------------------- FHIR resource store
class Resource(Base):
    """The current version of every FHIR resource the hub holds."""

    __tablename__ = "resource"
    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    content: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))


class ResourceVersion(Base):
    """Every version ever written. Rows are inserted, never updated or deleted."""

    __tablename__ = "resource_version"
    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime)
    method: Mapped[str] = mapped_column(String(8))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    content: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))


class SearchToken(Base):
    """token search parameters: identifier (system|value), status, code."""

    __tablename__ = "search_token"
    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    system: Mapped[str | None] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(String(255))
    __table_args__ = (
        Index("ix_search_token_lookup", "resource_type", "param", "value", "system"),
        Index("ix_search_token_owner", "id", "resource_type"),  # id first: see migration 0005
    )


class SearchReference(Base):
    """reference search parameters: subject, patient, based-on, focus."""

    __tablename__ = "search_reference"
    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(160))
    __table_args__ = (
        Index("ix_search_reference_lookup", "resource_type", "param", "target"),
        Index("ix_search_reference_owner", "id", "resource_type"),  # id first: see migration 0005
    )


class SearchDate(Base):
    """date search parameters: authored (ServiceRequest.authoredOn), others as they come. A stored
    date is the range its precision implies (``2026-12`` is the month): ``[value, value_end)``."""

    __tablename__ = "search_date"
    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    value: Mapped[datetime] = mapped_column(UTCDateTime)
    value_end: Mapped[datetime] = mapped_column(UTCDateTime)  # exclusive (migration 0008)
    __table_args__ = (
        Index("ix_search_date_lookup", "resource_type", "param", "value"),
        Index("ix_search_date_owner", "id", "resource_type"),  # id first: see migration 0005
    )


# --------------------------------------------------------------------------- the master record
class TherapyOrder(Base):
    """The journey state of one therapy order. The canonical record is the ServiceRequest with the
    same id; this row is what the journey's guards read and is written in the same transaction."""

    __tablename__ = "therapy_order"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    coi: Mapped[str] = mapped_column(String(32), unique=True)
    coi_check: Mapped[str] = mapped_column(String(1))
    product_code: Mapped[str] = mapped_column(String(64))
    product_version: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # active | on-hold | revoked | completed
    ordering_partner: Mapped[str] = mapped_column(String(64))
    placer_number: Mapped[str] = mapped_column(String(128))
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    open_holds: Mapped[int] = mapped_column(Integer, default=0)
    timezone: Mapped[str] = mapped_column(String(64))
    # Every journey event (transition, verification, hold, release, result) takes the next number.
    journey_seq: Mapped[int] = mapped_column(Integer, default=0)
    # Verifications count as evidence for the next stage only if newer than both of these.
    stage_seq: Mapped[int] = mapped_column(Integer, default=0)
    release_seq: Mapped[int] = mapped_column(Integer, default=0)
    viability_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    viability_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (UniqueConstraint("ordering_partner", "placer_number"),)


class OrderParticipant(Base):
    """Which partner takes part in which order, and as what. Partner isolation reads this."""

    __tablename__ = "order_participant"
    order_id: Mapped[str] = mapped_column(ForeignKey("therapy_order.id"), primary_key=True)
    partner_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    __table_args__ = (Index("ix_order_participant_partner", "partner_id", "order_id"),)


class StageTransition(Base):
    __tablename__ = "stage_transition"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("therapy_order.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    from_stage: Mapped[str | None] = mapped_column(String(64))
    to_stage: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    verification_id: Mapped[str | None] = mapped_column(String(36))


class OrderHold(Base):
    __tablename__ = "order_hold"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("therapy_order.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # identity-mismatch | manual | excursion | …
    reason: Mapped[str] = mapped_column(Text)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    opened_by: Mapped[str] = mapped_column(String(128))
    verification_id: Mapped[str | None] = mapped_column(String(36))
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    released_by: Mapped[str | None] = mapped_column(String(128))
    release_reason: Mapped[str | None] = mapped_column(Text)
    qa_decision_id: Mapped[str | None] = mapped_column(String(36))


class CoiSequence(Base):
    """Next chain-of-identity sequence number per issuing facility and year."""

    __tablename__ = "coi_sequence"
    fin: Mapped[str] = mapped_column(String(5), primary_key=True)
    year: Mapped[str] = mapped_column(String(2), primary_key=True)
    next_value: Mapped[int] = mapped_column(Integer)


class QcResult(Base):
    """One release-panel result, evaluated against the product's spec when it was recorded."""

    __tablename__ = "qc_result"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("therapy_order.id"), index=True)
    test_code: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(String(64))
    unit: Mapped[str | None] = mapped_column(String(32))
    in_spec: Mapped[bool] = mapped_column(Boolean)
    observation_id: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)


# --------------------------------------------------------------------------- identity and custody
class IdentityVerification(Base):
    __tablename__ = "identity_verification"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("therapy_order.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    checkpoint: Mapped[str] = mapped_column(String(32))
    step: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    local_time: Mapped[str] = mapped_column(String(40))
    timezone: Mapped[str] = mapped_column(String(64))
    operator: Mapped[str] = mapped_column(String(128))
    second_person: Mapped[str | None] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(16))
    device: Mapped[str | None] = mapped_column(String(128))
    site: Mapped[str | None] = mapped_column(String(64))
    scanned: Mapped[str] = mapped_column(Text)  # canonical JSON
    expected: Mapped[str] = mapped_column(Text)  # canonical JSON
    result: Mapped[str] = mapped_column(String(16))  # match | mismatch
    reason: Mapped[str | None] = mapped_column(Text)


class CustodyHandoff(Base):
    __tablename__ = "custody_handoff"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("therapy_order.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    material: Mapped[str] = mapped_column(String(32))  # apheresis | product | qc-sample
    from_party: Mapped[str] = mapped_column(String(128))
    to_party: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    location: Mapped[str | None] = mapped_column(String(128))
    reference: Mapped[str | None] = mapped_column(String(128))
    recorded_by: Mapped[str] = mapped_column(String(128))


# --------------------------------------------------------------------------- audit and signatures
class AuditEntry(Base):
    """Append-only, hash-chained. ``hash`` = H(prev_hash, seq, at, actor, action, entity, reason,
    old, new); see :mod:`hub.audit.chain`. Text columns keep the exact bytes that were hashed."""

    __tablename__ = "audit_entry"
    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    entity_type: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    old_value: Mapped[str] = mapped_column(Text)
    new_value: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    __table_args__ = (Index("ix_audit_entry_entity", "entity_type", "entity_id"),)


class AuditHead(Base):
    """One row: the chain's length and head hash. Locked by every writer (serialises the chain)."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AppUser(Base):
    """People who operate the hub and sign records. Passwords are scrypt hashes."""

    __tablename__ = "app_user"
    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    printed_name: Mapped[str] = mapped_column(String(128))
    roles: Mapped[str] = mapped_column(String(255))  # space separated
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Failed signing re-authentications since the last success or lockout, and the lockout's end
    # (hub/signatures/service.py; 21 CFR 11.300(d)).
    failed_signing_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Signature(Base):
    __tablename__ = "signature"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    record_type: Mapped[str] = mapped_column(String(64))
    record_id: Mapped[str] = mapped_column(String(64))
    record_version: Mapped[int] = mapped_column(Integer)
    record_hash: Mapped[str] = mapped_column(String(64))
    username: Mapped[str] = mapped_column(String(64))
    printed_name: Mapped[str] = mapped_column(String(128))
    meaning: Mapped[str] = mapped_column(String(16))
    signed_at: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    signature_hash: Mapped[str] = mapped_column(String(64))
    __table_args__ = (Index("ix_signature_record", "record_type", "record_id", "record_version"),)


class QaDecision(Base):
    __tablename__ = "qa_decision"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("therapy_order.id"), index=True)
    hold_id: Mapped[str] = mapped_column(String(36))
    decision: Mapped[str] = mapped_column(String(16))  # release | cancel
    rationale: Mapped[str] = mapped_column(Text)
    signature_id: Mapped[str] = mapped_column(String(36))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)


# --------------------------------------------------------------------------- messaging
class InboxMessage(Base):
    """Every inbound message, raw, before it is interpreted."""

    __tablename__ = "inbox_message"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    partner: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(255))
    content_hash: Mapped[str] = mapped_column(String(64))
    raw: Mapped[bytes] = mapped_column(Bytes)
    message_type: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))  # received | handled | rejected | failed | quarantined
    response: Mapped[bytes | None] = mapped_column(Bytes)
    error: Mapped[str | None] = mapped_column(Text)
    order_id: Mapped[str | None] = mapped_column(String(64), index=True)
    handled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    __table_args__ = (
        UniqueConstraint("partner", "channel", "external_id"),
        Index("ix_inbox_message_received", "received_at"),
    )


class OutboxEvent(Base):
    """Events written in the same transaction as the change they announce."""

    __tablename__ = "outbox_event"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    event_type: Mapped[str] = mapped_column(String(64))
    aggregate_id: Mapped[str] = mapped_column(String(64))
    partition: Mapped[int] = mapped_column(Integer)
    payload: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    __table_args__ = (Index("ix_outbox_event_unpublished", "published_at", "id"),)


class ConsumerHandled(Base):
    """What each consumer has handled: the idempotency record, written with the consumer's effects."""

    __tablename__ = "consumer_handled"
    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    handled_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeadLetter(Base):
    __tablename__ = "dead_letter"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consumer: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text)
    dead_at: Mapped[datetime] = mapped_column(UTCDateTime)
    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    __table_args__ = (UniqueConstraint("consumer", "event_id"),)


class Lease(Base):
    """A named lease (e.g. the outbox relay) so only one process holds a role at a time."""

    __tablename__ = "lease"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Alert(Base):
    __tablename__ = "alert"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    order_id: Mapped[str | None] = mapped_column(String(64), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))


def table_of(model: type[Base]) -> Table:
    """The Core table of a mapped class (typed: ``__table__`` is declared as a FromClause)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


# Tables of later areas live in their own modules; importing them here puts them in the metadata.
from hub.db import models_fhirapi, models_hl7v2, models_logistics, models_scheduling  # noqa: E402, F401
