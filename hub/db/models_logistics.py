"""Tables of the logistics domain: shipment legs, courier events, temperature, viability clock,
customs declarations, outbound courier/customs work, alert escalations and the conditioning
schedule. Migration ``0004`` creates these (``0006`` adds ``shipment.pickup_after`` and
``outbound_work.claim_token``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hub.db.models import Base, BigId
from hub.db.types import UTCDateTime


class Shipment(Base):
    """One leg of the journey in a courier's hands. The canonical record is the FHIR Task with id
    ``task_id`` (shaped like the R5 Transport resource); this row is what the logistics rules read."""

    __tablename__ = "shipment"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("therapy_order.id"), index=True)
    leg_code: Mapped[str] = mapped_column(String(64))
    material: Mapped[str] = mapped_column(String(32))  # apheresis | product
    courier: Mapped[str] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(64))
    # planned | booking | booked | picked-up | in-transit | customs-hold | out-for-delivery | delivered
    # | exception | failed | cancelled
    status: Mapped[str] = mapped_column(String(24))
    tracking_number: Mapped[str | None] = mapped_column(String(64))
    booking_reference: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    eta: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The earliest pickup the operator asked for (None: as soon as possible); sent to the courier.
    pickup_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    picked_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    customs_partner: Mapped[str | None] = mapped_column(String(64))
    # A stage move a courier event asked for whose guards did not hold yet (e.g. the courier-handoff
    # identity verification is missing); retried when identity is verified.
    pending_stage: Mapped[str | None] = mapped_column(String(64))
    pending_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    task_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (UniqueConstraint("courier", "tracking_number"),)


class ShipmentEvent(Base):
    """Every courier status event, mapped or not (an unknown code is kept, never dropped)."""

    __tablename__ = "shipment_event"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    shipment_id: Mapped[str] = mapped_column(ForeignKey("shipment.id"), index=True)
    order_id: Mapped[str] = mapped_column(String(64), index=True)
    inbox_message_id: Mapped[str | None] = mapped_column(String(36))
    courier_code: Mapped[str] = mapped_column(String(64))
    canonical: Mapped[str] = mapped_column(String(24))  # a ShipmentEventKind or "unknown"
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    location: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(Text)  # what the hub did with it (applied, stage pending, …)
    __table_args__ = (UniqueConstraint("shipment_id", "courier_code", "occurred_at"),)


class TemperatureReading(Base):
    """Raw logger readings (append-only). FHIR Observations aggregate them per batch and per
    excursion (see hub/logistics/temperature.py for why)."""

    __tablename__ = "temperature_reading"
    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    shipment_id: Mapped[str] = mapped_column(String(36))
    logger: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    temperature_c: Mapped[float | None] = mapped_column(Float)
    ln2_percent: Mapped[float | None] = mapped_column(Float)
    in_range: Mapped[bool] = mapped_column(Boolean)
    __table_args__ = (Index("ix_temperature_reading_shipment_at", "shipment_id", "at"),)


class TemperatureState(Base):
    """The running state of one shipment's excursion check, so a batch is checked without
    re-reading earlier readings."""

    __tablename__ = "temperature_state"
    shipment_id: Mapped[str] = mapped_column(ForeignKey("shipment.id"), primary_key=True)
    readings: Mapped[int] = mapped_column(Integer, default=0)
    last_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    min_c: Mapped[float | None] = mapped_column(Float)
    max_c: Mapped[float | None] = mapped_column(Float)
    excursion_id: Mapped[str | None] = mapped_column(String(36))  # the open excursion, if any


class TemperatureExcursion(Base):
    __tablename__ = "temperature_excursion"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    shipment_id: Mapped[str] = mapped_column(ForeignKey("shipment.id"), index=True)
    order_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # too-warm | too-cold | ln2-low
    limit_value: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_out_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    peak: Mapped[float] = mapped_column(Float)
    readings: Mapped[int] = mapped_column(Integer)
    escalated: Mapped[bool] = mapped_column(Boolean, default=False)
    observation_id: Mapped[str | None] = mapped_column(String(64))


class ViabilityAlert(Base):
    """Which viability escalations were raised for an order (each level once)."""

    __tablename__ = "viability_alert"
    order_id: Mapped[str] = mapped_column(ForeignKey("therapy_order.id"), primary_key=True)
    level: Mapped[str] = mapped_column(String(48), primary_key=True)  # 0.5 | 0.75 | 0.9 | breach | eta:<leg> | …
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime)
    detail: Mapped[str] = mapped_column(Text)


class ConditioningSchedule(Base):
    """The patient's conditioning (lymphodepletion) schedule: the product must be there in time."""

    __tablename__ = "conditioning_schedule"
    order_id: Mapped[str] = mapped_column(ForeignKey("therapy_order.id"), primary_key=True)
    conditioning_start: Mapped[datetime] = mapped_column(UTCDateTime)
    planned_infusion_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CustomsDeclaration(Base):
    __tablename__ = "customs_declaration"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    shipment_id: Mapped[str] = mapped_column(ForeignKey("shipment.id"), index=True)
    order_id: Mapped[str] = mapped_column(String(64), index=True)
    partner: Mapped[str] = mapped_column(String(64))
    functional_reference: Mapped[str] = mapped_column(String(35), unique=True)
    mrn: Mapped[str | None] = mapped_column(String(18))
    # pending | submitted | accepted | under-control | released | rejected | failed
    status: Mapped[str] = mapped_column(String(16))
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OutboundWork(Base):
    """Calls to partners the hub owes (book a courier, submit or poll a customs declaration). The
    call itself happens outside any transaction; its outcome is recorded in a new unit of work."""

    __tablename__ = "outbound_work"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))  # booking | customs-submit | customs-poll
    partner: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str] = mapped_column(String(36))  # shipment or declaration id
    idempotency_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # pending | done | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Who holds the claim: a new token per claim; only the attempt holding it records an outcome here.
    claim_token: Mapped[str | None] = mapped_column(String(36))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (
        Index("ix_outbound_work_due", "status", "next_attempt_at"),
        UniqueConstraint("kind", "idempotency_key"),
    )


class OutboundAttempt(Base):
    """One row per attempt (status, truncated answer, duration)."""

    __tablename__ = "outbound_attempt"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    work_id: Mapped[str] = mapped_column(ForeignKey("outbound_work.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(
        String(16)
    )  # ok | retry | failed | sent (a call that cannot be repeated is in flight, or was cut off)
    # | late (the attempt ended after losing its claim: its answer is recorded, the item left alone)
    detail: Mapped[str] = mapped_column(Text)


class AlertEscalation(Base):
    __tablename__ = "alert_escalation"
    alert_id: Mapped[str] = mapped_column(ForeignKey("alert.id"), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    escalated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    event_id: Mapped[str] = mapped_column(String(36))


class AlertAcknowledgement(Base):
    """Who acknowledged an alert, by name, and why (the alert row keeps the latest)."""

    __tablename__ = "alert_acknowledgement"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alert.id"), index=True)
    by: Mapped[str] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
