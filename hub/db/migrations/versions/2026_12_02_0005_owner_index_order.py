"""search index tables: the owner index leads with id, not resource_type.

Why: on PostgreSQL, before ANALYZE has run on the search tables (a new database, or one that grew
fast), the planner answered an identifier lookup (``resource_type, param, value, system``) through
``ix_search_token_owner (resource_type, id)``, which matches only the first column: every lookup
filtered all rows of that resource type. On a fresh database, the HL7 ingest bench ran at ~30
messages/s with 150-400 ms ACKs for its first seconds, then jumped to ~180/s at ~45 ms once
autovacuum analysed the tables (EXPLAIN showed the owner index with "Rows Removed by Filter"
equal to the table). With ``(id, resource_type)`` the owner index cannot serve a lookup that has no
id, so the lookup index is the only candidate whatever the statistics say. The owner index still
serves what it is for: dropping a resource's index rows by (resource_type, id).

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-02 18:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("search_token", "search_reference", "search_date")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_index(f"ix_{table}_owner")
            batch_op.create_index(f"ix_{table}_owner", ["id", "resource_type"], unique=False)


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_index(f"ix_{table}_owner")
            batch_op.create_index(f"ix_{table}_owner", ["resource_type", "id"], unique=False)
