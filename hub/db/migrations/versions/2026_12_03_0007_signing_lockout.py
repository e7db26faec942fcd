"""app_user: failed signing re-authentications and the lockout they lead to.

Why: signing re-authenticates with a password, and nothing stopped or recorded guessing it (25
wrong passwords, then the right one signed). 21 CFR 11.300(d) asks for safeguards that detect and
report attempts at unauthorized use. ``failed_signing_attempts`` counts failures since the last
success or lockout; ``locked_until`` refuses signing until then (an operator can unlock earlier).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"  # chained after 0006 when the branches were merged
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("app_user") as batch_op:
        batch_op.add_column(sa.Column("failed_signing_attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("app_user") as batch_op:
        batch_op.drop_column("locked_until")
        batch_op.drop_column("failed_signing_attempts")
