"""logistics: shipments, courier events, temperature, viability clock, customs, outbound work, alert escalation.

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-25 03:07:58.675040
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbound_work",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("partner", sa.String(length=64), nullable=False),
        sa.Column("subject_id", sa.String(length=36), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbound_work")),
        sa.UniqueConstraint("kind", "idempotency_key", name=op.f("uq_outbound_work_kind_idempotency_key")),
    )
    with op.batch_alter_table("outbound_work", schema=None) as batch_op:
        batch_op.create_index("ix_outbound_work_due", ["status", "next_attempt_at"], unique=False)

    op.create_table(
        "temperature_reading",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("shipment_id", sa.String(length=36), nullable=False),
        sa.Column("logger", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("temperature_c", sa.Float(), nullable=True),
        sa.Column("ln2_percent", sa.Float(), nullable=True),
        sa.Column("in_range", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_temperature_reading")),
    )
    with op.batch_alter_table("temperature_reading", schema=None) as batch_op:
        batch_op.create_index("ix_temperature_reading_shipment_at", ["shipment_id", "at"], unique=False)

    op.create_table(
        "alert_acknowledgement",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("alert_id", sa.String(length=36), nullable=False),
        sa.Column("by", sa.String(length=128), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["alert_id"], ["alert.id"], name=op.f("fk_alert_acknowledgement_alert_id_alert")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_acknowledgement")),
    )
    with op.batch_alter_table("alert_acknowledgement", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_acknowledgement_alert_id"), ["alert_id"], unique=False)

    op.create_table(
        "alert_escalation",
        sa.Column("alert_id", sa.String(length=36), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("escalated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["alert_id"], ["alert.id"], name=op.f("fk_alert_escalation_alert_id_alert")),
        sa.PrimaryKeyConstraint("alert_id", "level", name=op.f("pk_alert_escalation")),
    )
    op.create_table(
        "conditioning_schedule",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("conditioning_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("planned_infusion_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["therapy_order.id"], name=op.f("fk_conditioning_schedule_order_id_therapy_order")
        ),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_conditioning_schedule")),
    )
    op.create_table(
        "outbound_attempt",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("work_id", sa.String(length=36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["work_id"], ["outbound_work.id"], name=op.f("fk_outbound_attempt_work_id_outbound_work")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbound_attempt")),
    )
    with op.batch_alter_table("outbound_attempt", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbound_attempt_work_id"), ["work_id"], unique=False)

    op.create_table(
        "shipment",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("leg_code", sa.String(length=64), nullable=False),
        sa.Column("material", sa.String(length=32), nullable=False),
        sa.Column("courier", sa.String(length=64), nullable=False),
        sa.Column("origin", sa.String(length=64), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("tracking_number", sa.String(length=64), nullable=True),
        sa.Column("booking_reference", sa.String(length=64), nullable=True),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("eta", sa.DateTime(timezone=True), nullable=True),
        sa.Column("picked_up_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("customs_partner", sa.String(length=64), nullable=True),
        sa.Column("pending_stage", sa.String(length=64), nullable=True),
        sa.Column("pending_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["therapy_order.id"], name=op.f("fk_shipment_order_id_therapy_order")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shipment")),
        sa.UniqueConstraint("courier", "tracking_number", name=op.f("uq_shipment_courier_tracking_number")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_shipment_idempotency_key")),
    )
    with op.batch_alter_table("shipment", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_shipment_order_id"), ["order_id"], unique=False)

    op.create_table(
        "viability_alert",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("level", sa.String(length=48), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["therapy_order.id"], name=op.f("fk_viability_alert_order_id_therapy_order")
        ),
        sa.PrimaryKeyConstraint("order_id", "level", name=op.f("pk_viability_alert")),
    )
    op.create_table(
        "customs_declaration",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("shipment_id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("partner", sa.String(length=64), nullable=False),
        sa.Column("functional_reference", sa.String(length=35), nullable=False),
        sa.Column("mrn", sa.String(length=18), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["shipment_id"], ["shipment.id"], name=op.f("fk_customs_declaration_shipment_id_shipment")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customs_declaration")),
        sa.UniqueConstraint("functional_reference", name=op.f("uq_customs_declaration_functional_reference")),
    )
    with op.batch_alter_table("customs_declaration", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_customs_declaration_order_id"), ["order_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_customs_declaration_shipment_id"), ["shipment_id"], unique=False)

    op.create_table(
        "shipment_event",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("shipment_id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("inbox_message_id", sa.String(length=36), nullable=True),
        sa.Column("courier_code", sa.String(length=64), nullable=False),
        sa.Column("canonical", sa.String(length=24), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("location", sa.String(length=128), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["shipment_id"], ["shipment.id"], name=op.f("fk_shipment_event_shipment_id_shipment")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shipment_event")),
        sa.UniqueConstraint(
            "shipment_id",
            "courier_code",
            "occurred_at",
            name=op.f("uq_shipment_event_shipment_id_courier_code_occurred_at"),
        ),
    )
    with op.batch_alter_table("shipment_event", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_shipment_event_order_id"), ["order_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_shipment_event_shipment_id"), ["shipment_id"], unique=False)

    op.create_table(
        "temperature_excursion",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("shipment_id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("limit_value", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_out_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("peak", sa.Float(), nullable=False),
        sa.Column("readings", sa.Integer(), nullable=False),
        sa.Column("escalated", sa.Boolean(), nullable=False),
        sa.Column("observation_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["shipment_id"], ["shipment.id"], name=op.f("fk_temperature_excursion_shipment_id_shipment")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_temperature_excursion")),
    )
    with op.batch_alter_table("temperature_excursion", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_temperature_excursion_order_id"), ["order_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_temperature_excursion_shipment_id"), ["shipment_id"], unique=False)

    op.create_table(
        "temperature_state",
        sa.Column("shipment_id", sa.String(length=36), nullable=False),
        sa.Column("readings", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("min_c", sa.Float(), nullable=True),
        sa.Column("max_c", sa.Float(), nullable=True),
        sa.Column("excursion_id", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["shipment_id"], ["shipment.id"], name=op.f("fk_temperature_state_shipment_id_shipment")
        ),
        sa.PrimaryKeyConstraint("shipment_id", name=op.f("pk_temperature_state")),
    )


def downgrade() -> None:
    op.drop_table("temperature_state")
    with op.batch_alter_table("temperature_excursion", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_temperature_excursion_shipment_id"))
        batch_op.drop_index(batch_op.f("ix_temperature_excursion_order_id"))

    op.drop_table("temperature_excursion")
    with op.batch_alter_table("shipment_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_shipment_event_shipment_id"))
        batch_op.drop_index(batch_op.f("ix_shipment_event_order_id"))

    op.drop_table("shipment_event")
    with op.batch_alter_table("customs_declaration", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_customs_declaration_shipment_id"))
        batch_op.drop_index(batch_op.f("ix_customs_declaration_order_id"))

    op.drop_table("customs_declaration")
    op.drop_table("viability_alert")
    with op.batch_alter_table("shipment", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_shipment_order_id"))

    op.drop_table("shipment")
    with op.batch_alter_table("outbound_attempt", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbound_attempt_work_id"))

    op.drop_table("outbound_attempt")
    op.drop_table("conditioning_schedule")
    op.drop_table("alert_escalation")
    with op.batch_alter_table("alert_acknowledgement", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_acknowledgement_alert_id"))

    op.drop_table("alert_acknowledgement")
    with op.batch_alter_table("temperature_reading", schema=None) as batch_op:
        batch_op.drop_index("ix_temperature_reading_shipment_at")

    op.drop_table("temperature_reading")
    with op.batch_alter_table("outbound_work", schema=None) as batch_op:
        batch_op.drop_index("ix_outbound_work_due")

    op.drop_table("outbound_work")
