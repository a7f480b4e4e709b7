"""A job can wait for its oracle's quota: ``not_before``, ``quota_waits`` and ``waiting``

A job whose oracle's hourly quota is used up goes back to the queue until ``not_before``;
``waiting`` says why (shown by GET /v1/jobs/{id}); ``quota_waits`` counts the waits since
the job last made progress, so that a quota that never renews fails the job in the end.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "jobs", sa.Column("quota_waits", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column("jobs", sa.Column("waiting", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "waiting")
    op.drop_column("jobs", "quota_waits")
    op.drop_column("jobs", "not_before")
