"""Deletion leaves tombstones: ``deleted_at`` on datasets, credentials and jobs

A deleted credential keeps its row (jobs refer to it) without its secret (ciphertext
emptied); a deleted job keeps its row (the ledger, and so /v1/spend, refers to it) without
its spec, results, checkpoint, metrics or files; a deleted data set keeps its row (jobs
refer to it) without its file. A downgrade drops the column: tombstones then show again,
without what was deleted.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"

TABLES = ("datasets", "credentials", "jobs")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "deleted_at")
