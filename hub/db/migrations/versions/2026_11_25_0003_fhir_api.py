"""FHIR API: resource owners, conditional-create keys, SMART assertion ids, subscription deliveries;
on PostgreSQL, row-level security for partner reads of the resource store.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 09:00:00

Row-level security (PostgreSQL only). Partner reads (read, vread, history, search, _include) run
under ``SET LOCAL ROLE cgthub_partner`` with ``cgthub.partner`` set to the caller's partner id. That
role is not the tables' owner, so the policies below apply to it: a row of ``resource`` or
``resource_version`` is visible only if ``cgthub_partner_sees`` says so — the same rule the
application applies in SQL (``hub.api.isolation``), so a bug in one of them alone leaks nothing.
Writes and the hub's own jobs run as the owner (the core must see every order: CoI sequence, audit
chain), so they are not covered by RLS; the application rule guards them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"  # chained after hl7v2 when the branches were merged
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARTNER_ROLE = "cgthub_partner"
# Elements whose reference to ServiceRequest/<order id> puts a resource in that order's compartment
# (as indexed in search_reference.param). Keep in step with hub.api.isolation.ORDER_LINKS.
ORDER_LINK_ELEMENTS = ("basedOn", "request", "target", "focus")

SEES = f"""
CREATE OR REPLACE FUNCTION cgthub_partner_sees(rtype text, rid text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
  me text := current_setting('cgthub.partner', true);
BEGIN
  IF me IS NULL OR me = '' THEN
    RETURN false;
  END IF;
  IF EXISTS (SELECT 1 FROM fhir_resource_owner o
             WHERE o.resource_type = rtype AND o.resource_id = rid AND o.partner_id = me) THEN
    RETURN true;
  END IF;
  IF rtype = 'ServiceRequest' THEN
    RETURN EXISTS (SELECT 1 FROM order_participant p WHERE p.order_id = rid AND p.partner_id = me);
  ELSIF rtype = 'Patient' THEN
    RETURN EXISTS (SELECT 1 FROM therapy_order t JOIN order_participant p ON p.order_id = t.id
                   WHERE t.patient_id = rid AND p.partner_id = me);
  ELSIF rtype = 'Organization' THEN
    RETURN rid = 'org-' || me OR EXISTS (
      SELECT 1 FROM order_participant other JOIN order_participant mine ON mine.order_id = other.order_id
      WHERE rid LIKE 'org-%' AND other.partner_id = substr(rid, 5) AND mine.partner_id = me);
  ELSIF rtype = 'Practitioner' THEN
    RETURN EXISTS (SELECT 1 FROM search_reference r JOIN order_participant p ON p.order_id = r.id
                   WHERE r.resource_type = 'ServiceRequest' AND r.param = 'requester'
                     AND r.target = 'Practitioner/' || rid AND p.partner_id = me);
  END IF;
  IF rtype = 'Device' AND EXISTS (
      SELECT 1 FROM search_reference r
        JOIN therapy_order t ON t.patient_id = substr(r.target, 9)
        JOIN order_participant p ON p.order_id = t.id
      WHERE r.resource_type = 'Device' AND r.id = rid AND r.param = 'patient'
        AND r.target LIKE 'Patient/%' AND p.partner_id = me) THEN
    RETURN true;
  END IF;
  RETURN EXISTS (
    SELECT 1 FROM search_reference r JOIN order_participant p ON p.order_id = substr(r.target, 16)
    WHERE r.resource_type = rtype AND r.id = rid
      AND r.param IN ({", ".join(f"'{e}'" for e in ORDER_LINK_ELEMENTS)})
      AND r.target LIKE 'ServiceRequest/%' AND p.partner_id = me);
END
$$;
"""


def upgrade() -> None:
    op.create_table(
        "fhir_resource_owner",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "resource_id", name=op.f("pk_fhir_resource_owner")),
    )
    with op.batch_alter_table("fhir_resource_owner", schema=None) as batch_op:
        batch_op.create_index("ix_fhir_resource_owner_partner", ["partner_id", "resource_type"], unique=False)
    op.create_table(
        "fhir_conditional_key",
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("criteria_hash", sa.String(length=64), nullable=False),
        sa.Column("criteria", sa.Text(), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "resource_type", "criteria_hash", name=op.f("pk_fhir_conditional_key")),
    )
    op.create_table(
        "smart_assertion",
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "jti", name=op.f("pk_smart_assertion")),
    )
    with op.batch_alter_table("smart_assertion", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_smart_assertion_expires_at"), ["expires_at"], unique=False)
    op.create_table(
        "subscription_delivery",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("subscription_id", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("focus", sa.String(length=160), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_delivery")),
        sa.UniqueConstraint(
            "subscription_id", "event_id", "focus", name=op.f("uq_subscription_delivery_subscription_id_event_id_focus")
        ),
    )
    with op.batch_alter_table("subscription_delivery", schema=None) as batch_op:
        batch_op.create_index("ix_subscription_delivery_due", ["status", "next_attempt_at"], unique=False)
    op.create_table(
        "subscription_attempt",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("delivery_id", sa.String(length=36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_attempt")),
    )
    with op.batch_alter_table("subscription_attempt", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subscription_attempt_delivery_id"), ["delivery_id"], unique=False)

    with op.batch_alter_table("resource_version", schema=None) as batch_op:
        batch_op.create_index("ix_resource_version_type_updated", ["resource_type", "last_updated"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        _enable_rls()


def _enable_rls() -> None:
    # The role is cluster-wide: create it once (concurrent migrations of other databases may race).
    op.execute(
        f"""
        DO $$ BEGIN
          IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{PARTNER_ROLE}') THEN
            CREATE ROLE {PARTNER_ROLE} NOLOGIN NOINHERIT;
          END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$;
        """
    )
    # The application's login must be able to SET ROLE to it (superusers can anyway).
    op.execute(
        f"""
        DO $$ BEGIN
          EXECUTE format('GRANT {PARTNER_ROLE} TO %I', current_user);
        EXCEPTION WHEN OTHERS THEN NULL;
        END $$;
        """
    )
    tables = (
        "resource",
        "resource_version",
        "search_token",
        "search_reference",
        "search_date",
        "order_participant",
        "therapy_order",
        "fhir_resource_owner",
    )
    op.execute(f"GRANT SELECT ON {', '.join(tables)} TO {PARTNER_ROLE}")
    op.execute(SEES)
    op.execute(f"GRANT EXECUTE ON FUNCTION cgthub_partner_sees(text, text) TO {PARTNER_ROLE}")
    for table in ("resource", "resource_version"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY partner_read ON {table} FOR SELECT TO {PARTNER_ROLE} "
            "USING (cgthub_partner_sees(resource_type, id))"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in ("resource", "resource_version"):
            op.execute(f"DROP POLICY IF EXISTS partner_read ON {table}")
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
        op.execute("DROP FUNCTION IF EXISTS cgthub_partner_sees(text, text)")
        op.execute(
            "REVOKE SELECT ON resource, resource_version, search_token, search_reference, search_date, "
            f"order_participant, therapy_order FROM {PARTNER_ROLE}"
        )
    with op.batch_alter_table("resource_version", schema=None) as batch_op:
        batch_op.drop_index("ix_resource_version_type_updated")
    with op.batch_alter_table("subscription_attempt", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscription_attempt_delivery_id"))
    op.drop_table("subscription_attempt")
    with op.batch_alter_table("subscription_delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_subscription_delivery_due")
    op.drop_table("subscription_delivery")
    with op.batch_alter_table("smart_assertion", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_smart_assertion_expires_at"))
    op.drop_table("smart_assertion")
    op.drop_table("fhir_conditional_key")
    with op.batch_alter_table("fhir_resource_owner", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_resource_owner_partner")
    op.drop_table("fhir_resource_owner")
