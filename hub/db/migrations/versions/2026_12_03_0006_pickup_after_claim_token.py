"""shipment.pickup_after and outbound_work.claim_token.

Why: the operator's requested pickup time (``BookShipment.pickup_after``) was only audited, and the
booking sent the courier "now"; it is kept on the leg so the dispatcher can send it. A work item's
claim had no owner: a worker whose claim lapsed during a long courier call recorded its outcome
over the worker that claimed the item after it. Each claim now carries a token, and an outcome is
written to the work item only by the attempt that still holds it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shipment") as batch_op:
        batch_op.add_column(sa.Column("pickup_after", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("outbound_work") as batch_op:
        batch_op.add_column(sa.Column("claim_token", sa.String(length=36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbound_work") as batch_op:
        batch_op.drop_column("claim_token")
    with op.batch_alter_table("shipment") as batch_op:
        batch_op.drop_column("pickup_after")
