"""Answers saved as they are paid for: ``paid_answers`` replaces ``carried_answers``

0008 kept a job's answers since its last checkpoint only when the job went back to the queue
to wait for its oracle's quota, in one row written at that moment; an execution whose
process died lost them, and its successor paid for them again. ``paid_answers`` holds one
pack per provider request, written as the request is settled
(``adapters.dispatch.AnswerCache.flush``), so both kinds of interruption leave them to the
next execution. A waiting job's carried row becomes its first pack. A downgrade keeps no
packs: a job interrupted at that moment pays once more for what it had received since its
checkpoint (the ledger counts it), as it did before 0009.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"


def _external(table: str) -> None:
    # probabilities do not compress: stored out of line, as checkpoints are
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {table} ALTER COLUMN answers SET STORAGE EXTERNAL")


def upgrade() -> None:
    op.create_table(
        "paid_answers",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("answers", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_paid_answers_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_paid_answers")),
    )
    op.create_index(op.f("ix_paid_answers_job_id"), "paid_answers", ["job_id"], unique=False)
    _external("paid_answers")
    op.execute(
        "INSERT INTO paid_answers (job_id, answers, created_at) "
        "SELECT job_id, answers, created_at FROM carried_answers"
    )
    op.drop_table("carried_answers")


def downgrade() -> None:
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
    _external("carried_answers")
    op.drop_index(op.f("ix_paid_answers_job_id"), table_name="paid_answers")
    op.drop_table("paid_answers")
