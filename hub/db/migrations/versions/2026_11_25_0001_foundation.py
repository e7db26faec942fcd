"""foundation: resource store, master record, identity, audit chain, signatures, inbox/outbox.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25 02:13:58.544785
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "alert",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert")),
        sa.UniqueConstraint("event_id", name=op.f("uq_alert_event_id")),
    )
    with op.batch_alter_table("alert", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_order_id"), ["order_id"], unique=False)

    op.create_table(
        "app_user",
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("printed_name", sa.String(length=128), nullable=False),
        sa.Column("roles", sa.String(length=255), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_app_user")),
    )
    op.create_table(
        "audit_entry",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False, nullable=False),
        sa.Column("at", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("entity_type", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("old_value", sa.Text(), nullable=False),
        sa.Column("new_value", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_entry")),
    )
    with op.batch_alter_table("audit_entry", schema=None) as batch_op:
        batch_op.create_index("ix_audit_entry_entity", ["entity_type", "entity_id"], unique=False)

    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    op.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '" + "0" * 64 + "')")
    op.create_table(
        "coi_sequence",
        sa.Column("fin", sa.String(length=5), nullable=False),
        sa.Column("year", sa.String(length=2), nullable=False),
        sa.Column("next_value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("fin", "year", name=op.f("pk_coi_sequence")),
    )
    op.create_table(
        "consumer_handled",
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=op.f("pk_consumer_handled")),
    )
    op.create_table(
        "dead_letter",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letter")),
        sa.UniqueConstraint("consumer", "event_id", name=op.f("uq_dead_letter_consumer_event_id")),
    )
    op.create_table(
        "inbox_message",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("partner", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("raw", sa.LargeBinary().with_variant(postgresql.BYTEA(), "postgresql"), nullable=False),
        sa.Column("message_type", sa.String(length=64), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("response", sa.LargeBinary().with_variant(postgresql.BYTEA(), "postgresql"), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox_message")),
        sa.UniqueConstraint(
            "partner", "channel", "external_id", name=op.f("uq_inbox_message_partner_channel_external_id")
        ),
    )
    with op.batch_alter_table("inbox_message", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_inbox_message_order_id"), ["order_id"], unique=False)
        batch_op.create_index("ix_inbox_message_received", ["received_at"], unique=False)

    op.create_table(
        "lease",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_lease")),
    )
    op.create_table(
        "outbox_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("aggregate_id", sa.String(length=64), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_event")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_event_id")),
    )
    with op.batch_alter_table("outbox_event", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_event_unpublished", ["published_at", "id"], unique=False)

    op.create_table(
        "resource",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "id", name=op.f("pk_resource")),
    )
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_resource_last_updated"), ["last_updated"], unique=False)

    op.create_table(
        "resource_version",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "id", "version_id", name=op.f("pk_resource_version")),
    )
    op.create_table(
        "search_date",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("value", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_search_date")),
    )
    with op.batch_alter_table("search_date", schema=None) as batch_op:
        batch_op.create_index("ix_search_date_lookup", ["resource_type", "param", "value"], unique=False)
        batch_op.create_index("ix_search_date_owner", ["resource_type", "id"], unique=False)

    op.create_table(
        "search_reference",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=160), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_search_reference")),
    )
    with op.batch_alter_table("search_reference", schema=None) as batch_op:
        batch_op.create_index("ix_search_reference_lookup", ["resource_type", "param", "target"], unique=False)
        batch_op.create_index("ix_search_reference_owner", ["resource_type", "id"], unique=False)

    op.create_table(
        "search_token",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_search_token")),
    )
    with op.batch_alter_table("search_token", schema=None) as batch_op:
        batch_op.create_index("ix_search_token_lookup", ["resource_type", "param", "value", "system"], unique=False)
        batch_op.create_index("ix_search_token_owner", ["resource_type", "id"], unique=False)

    op.create_table(
        "signature",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("record_type", sa.String(length=64), nullable=False),
        sa.Column("record_id", sa.String(length=64), nullable=False),
        sa.Column("record_version", sa.Integer(), nullable=False),
        sa.Column("record_hash", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("printed_name", sa.String(length=128), nullable=False),
        sa.Column("meaning", sa.String(length=16), nullable=False),
        sa.Column("signed_at", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("signature_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signature")),
    )
    with op.batch_alter_table("signature", schema=None) as batch_op:
        batch_op.create_index("ix_signature_record", ["record_type", "record_id", "record_version"], unique=False)

    op.create_table(
        "therapy_order",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("coi", sa.String(length=32), nullable=False),
        sa.Column("coi_check", sa.String(length=1), nullable=False),
        sa.Column("product_code", sa.String(length=64), nullable=False),
        sa.Column("product_version", sa.String(length=32), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ordering_partner", sa.String(length=64), nullable=False),
        sa.Column("placer_number", sa.String(length=128), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("open_holds", sa.Integer(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("journey_seq", sa.Integer(), nullable=False),
        sa.Column("stage_seq", sa.Integer(), nullable=False),
        sa.Column("release_seq", sa.Integer(), nullable=False),
        sa.Column("viability_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("viability_deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_therapy_order")),
        sa.UniqueConstraint("coi", name=op.f("uq_therapy_order_coi")),
        sa.UniqueConstraint(
            "ordering_partner", "placer_number", name=op.f("uq_therapy_order_ordering_partner_placer_number")
        ),
    )
    with op.batch_alter_table("therapy_order", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_therapy_order_patient_id"), ["patient_id"], unique=False)

    op.create_table(
        "custody_handoff",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("material", sa.String(length=32), nullable=False),
        sa.Column("from_party", sa.String(length=128), nullable=False),
        sa.Column("to_party", sa.String(length=128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("location", sa.String(length=128), nullable=True),
        sa.Column("reference", sa.String(length=128), nullable=True),
        sa.Column("recorded_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["therapy_order.id"], name=op.f("fk_custody_handoff_order_id_therapy_order")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_custody_handoff")),
    )
    with op.batch_alter_table("custody_handoff", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_custody_handoff_order_id"), ["order_id"], unique=False)

    op.create_table(
        "identity_verification",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("checkpoint", sa.String(length=32), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("local_time", sa.String(length=40), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("operator", sa.String(length=128), nullable=False),
        sa.Column("second_person", sa.String(length=128), nullable=True),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("device", sa.String(length=128), nullable=True),
        sa.Column("site", sa.String(length=64), nullable=True),
        sa.Column("scanned", sa.Text(), nullable=False),
        sa.Column("expected", sa.Text(), nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["order_id"], ["therapy_order.id"], name=op.f("fk_identity_verification_order_id_therapy_order")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_verification")),
    )
    with op.batch_alter_table("identity_verification", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identity_verification_order_id"), ["order_id"], unique=False)

    op.create_table(
        "order_hold",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_by", sa.String(length=128), nullable=False),
        sa.Column("verification_id", sa.String(length=36), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_by", sa.String(length=128), nullable=True),
        sa.Column("release_reason", sa.Text(), nullable=True),
        sa.Column("qa_decision_id", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["therapy_order.id"], name=op.f("fk_order_hold_order_id_therapy_order")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_hold")),
    )
    with op.batch_alter_table("order_hold", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_order_hold_order_id"), ["order_id"], unique=False)

    op.create_table(
        "order_participant",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"], ["therapy_order.id"], name=op.f("fk_order_participant_order_id_therapy_order")
        ),
        sa.PrimaryKeyConstraint("order_id", "partner_id", "role", name=op.f("pk_order_participant")),
    )
    with op.batch_alter_table("order_participant", schema=None) as batch_op:
        batch_op.create_index("ix_order_participant_partner", ["partner_id", "order_id"], unique=False)

    op.create_table(
        "qa_decision",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("hold_id", sa.String(length=36), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("rationale", sa.Text(), nullable=False),
        sa.Column("signature_id", sa.String(length=36), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["therapy_order.id"], name=op.f("fk_qa_decision_order_id_therapy_order")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_qa_decision")),
    )
    with op.batch_alter_table("qa_decision", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_qa_decision_order_id"), ["order_id"], unique=False)

    op.create_table(
        "qc_result",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("test_code", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("unit", sa.String(length=32), nullable=True),
        sa.Column("in_spec", sa.Boolean(), nullable=False),
        sa.Column("observation_id", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("superseded", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["therapy_order.id"], name=op.f("fk_qc_result_order_id_therapy_order")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_qc_result")),
    )
    with op.batch_alter_table("qc_result", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_qc_result_order_id"), ["order_id"], unique=False)

    op.create_table(
        "stage_transition",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("from_stage", sa.String(length=64), nullable=True),
        sa.Column("to_stage", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("verification_id", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["order_id"], ["therapy_order.id"], name=op.f("fk_stage_transition_order_id_therapy_order")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stage_transition")),
    )
    with op.batch_alter_table("stage_transition", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stage_transition_order_id"), ["order_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stage_transition", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stage_transition_order_id"))

    op.drop_table("stage_transition")
    with op.batch_alter_table("qc_result", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_qc_result_order_id"))

    op.drop_table("qc_result")
    with op.batch_alter_table("qa_decision", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_qa_decision_order_id"))

    op.drop_table("qa_decision")
    with op.batch_alter_table("order_participant", schema=None) as batch_op:
        batch_op.drop_index("ix_order_participant_partner")

    op.drop_table("order_participant")
    with op.batch_alter_table("order_hold", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_order_hold_order_id"))

    op.drop_table("order_hold")
    with op.batch_alter_table("identity_verification", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identity_verification_order_id"))

    op.drop_table("identity_verification")
    with op.batch_alter_table("custody_handoff", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_custody_handoff_order_id"))

    op.drop_table("custody_handoff")
    with op.batch_alter_table("therapy_order", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_therapy_order_patient_id"))

    op.drop_table("therapy_order")
    with op.batch_alter_table("signature", schema=None) as batch_op:
        batch_op.drop_index("ix_signature_record")

    op.drop_table("signature")
    with op.batch_alter_table("search_token", schema=None) as batch_op:
        batch_op.drop_index("ix_search_token_owner")
        batch_op.drop_index("ix_search_token_lookup")

    op.drop_table("search_token")
    with op.batch_alter_table("search_reference", schema=None) as batch_op:
        batch_op.drop_index("ix_search_reference_owner")
        batch_op.drop_index("ix_search_reference_lookup")

    op.drop_table("search_reference")
    with op.batch_alter_table("search_date", schema=None) as batch_op:
        batch_op.drop_index("ix_search_date_owner")
        batch_op.drop_index("ix_search_date_lookup")

    op.drop_table("search_date")
    op.drop_table("resource_version")
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_resource_last_updated"))

    op.drop_table("resource")
    with op.batch_alter_table("outbox_event", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_event_unpublished")

    op.drop_table("outbox_event")
    op.drop_table("lease")
    with op.batch_alter_table("inbox_message", schema=None) as batch_op:
        batch_op.drop_index("ix_inbox_message_received")
        batch_op.drop_index(batch_op.f("ix_inbox_message_order_id"))

    op.drop_table("inbox_message")
    op.drop_table("dead_letter")
    op.drop_table("consumer_handled")
    op.drop_table("coi_sequence")
    op.drop_table("audit_head")
    with op.batch_alter_table("audit_entry", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_entry_entity")

    op.drop_table("audit_entry")
    op.drop_table("app_user")
    with op.batch_alter_table("alert", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_order_id"))

    op.drop_table("alert")
