"""Answers carried over a wait for the oracle's quota: ``carried_answers``

A job that goes back to the queue to wait for its oracle's quota keeps the answers it paid
for after its last checkpoint, so that its next execution does not pay for them again
(``app.jobs.lifecycle.wait_for_quota``). Stored uncompressed on PostgreSQL, like
checkpoints: probabilities do not compress.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"


def upgrade() -> None:
    op.create_table(
        "carried_answers",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("answers", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_carried_answers_job_id_jobs")
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_carried_answers")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE carried_answers ALTER COLUMN answers SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("carried_answers")
