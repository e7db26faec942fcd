"""search_date: each indexed date is a range [value, value_end), from the stored value's precision.

Why: a stored partial date (``authoredOn: 2026-12``) was indexed as its first instant, so
``authored=ge2026-12-15`` missed it though the month reaches past the 15th, and
``authored=eq2026-12-01`` matched it though the day does not contain the month (R4 search: a
stored date is the range its precision implies; the prefixes compare ranges). ``value_end`` is
the end of that range (exclusive). Existing rows are recomputed from the resource's current
content with the hub's own reading of FHIR dates (the index is derived data); a row whose element
cannot be read again keeps a one-microsecond range (the instant it was indexed as).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 20:10:00
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The date parameters indexed when this migration was written (hub.fhirstore.indexing.DATE_PARAMS).
_ELEMENTS = {
    ("ServiceRequest", "authored"): "authoredOn",
    ("Observation", "date"): "effectiveDateTime",
    ("DiagnosticReport", "date"): "effectiveDateTime",
}


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _bind(value: datetime, dialect: str) -> datetime:
    return value.replace(tzinfo=None) if dialect == "sqlite" else value  # as hub.db.types.UTCDateTime


def upgrade() -> None:
    from hub.fhirstore.indexing import instant_range

    with op.batch_alter_table("search_date") as batch_op:
        batch_op.add_column(sa.Column("value_end", sa.DateTime(timezone=True), nullable=True))
    conn = op.get_bind()
    dialect = conn.dialect.name
    moment = sa.DateTime(timezone=True)
    dates = sa.table(
        "search_date",
        sa.column("pk", sa.BigInteger()),
        sa.column("resource_type", sa.String()),
        sa.column("id", sa.String()),
        sa.column("param", sa.String()),
        sa.column("value", moment),
        sa.column("value_end", moment),
    )
    resources = sa.table(
        "resource",
        sa.column("resource_type", sa.String()),
        sa.column("id", sa.String()),
        sa.column("content", sa.Text()),
    )
    rows = conn.execute(
        sa.select(dates.c.pk, dates.c.resource_type, dates.c.param, dates.c.value, resources.c.content).select_from(
            dates.outerjoin(
                resources,
                sa.and_(resources.c.resource_type == dates.c.resource_type, resources.c.id == dates.c.id),
            )
        )
    ).all()
    updates = []
    for pk, rtype, param, value, content in rows:
        start = _aware(value)
        bounds = None
        element = _ELEMENTS.get((rtype, param))
        if content and element:
            raw = json.loads(content).get(element)
            bounds = instant_range(raw) if isinstance(raw, str) else None
        start, end = bounds if bounds is not None else (start, start + timedelta(microseconds=1))
        updates.append({"k": pk, "v": _bind(start, dialect), "e": _bind(end, dialect)})
    if updates:
        conn.execute(
            dates.update()
            .where(dates.c.pk == sa.bindparam("k"))
            .values(value=sa.bindparam("v", type_=moment), value_end=sa.bindparam("e", type_=moment)),
            updates,
        )
    with op.batch_alter_table("search_date") as batch_op:
        batch_op.alter_column("value_end", existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("search_date") as batch_op:
        batch_op.drop_column("value_end")
