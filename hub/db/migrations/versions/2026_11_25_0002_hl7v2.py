"""hl7v2: outbound HL7 v2 messages and their delivery attempts; collection appointments.

Revision ID: 0002
Revises: 0004
Create Date: 2026-11-25 03:14:51.459153
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0004"  # chained after logistics when the branches were merged
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hl7v2_outbound",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("control_id", sa.String(length=20), nullable=False),
        sa.Column("partner", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("message_type", sa.String(length=16), nullable=False),
        sa.Column("snapshot", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary().with_variant(postgresql.BYTEA(), "postgresql"), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ack_code", sa.String(length=2), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7v2_outbound")),
        sa.UniqueConstraint("control_id", name=op.f("uq_hl7v2_outbound_control_id")),
        sa.UniqueConstraint("partner", "event_id", name=op.f("uq_hl7v2_outbound_partner_event_id")),
    )
    with op.batch_alter_table("hl7v2_outbound", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hl7v2_outbound_order_id"), ["order_id"], unique=False)
        batch_op.create_index("ix_hl7v2_outbound_queue", ["partner", "status", "id"], unique=False)

    op.create_table(
        "collection_appointment",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("partner", sa.String(length=64), nullable=False),
        sa.Column("appointment_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("location", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["therapy_order.id"], name=op.f("fk_collection_appointment_order_id_therapy_order")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collection_appointment")),
        sa.UniqueConstraint("partner", "appointment_id", name=op.f("uq_collection_appointment_partner_appointment_id")),
    )
    with op.batch_alter_table("collection_appointment", schema=None) as batch_op:
        batch_op.create_index("ix_collection_appointment_order", ["order_id", "status"], unique=False)

    op.create_table(
        "hl7v2_outbound_attempt",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("outbound_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("ack", sa.LargeBinary().with_variant(postgresql.BYTEA(), "postgresql"), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["outbound_id"], ["hl7v2_outbound.id"], name=op.f("fk_hl7v2_outbound_attempt_outbound_id_hl7v2_outbound")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7v2_outbound_attempt")),
    )
    with op.batch_alter_table("hl7v2_outbound_attempt", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hl7v2_outbound_attempt_outbound_id"), ["outbound_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("hl7v2_outbound_attempt", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hl7v2_outbound_attempt_outbound_id"))

    op.drop_table("hl7v2_outbound_attempt")
    with op.batch_alter_table("collection_appointment", schema=None) as batch_op:
        batch_op.drop_index("ix_collection_appointment_order")

    op.drop_table("collection_appointment")
    with op.batch_alter_table("hl7v2_outbound", schema=None) as batch_op:
        batch_op.drop_index("ix_hl7v2_outbound_queue")
        batch_op.drop_index(batch_op.f("ix_hl7v2_outbound_order_id"))

    op.drop_table("hl7v2_outbound")
