"""Checkpoints stored uncompressed on PostgreSQL (no effect on SQLite)

A checkpoint is mostly float64 read-out weights, which pglz cannot shrink (760 kB → ~750 kB)
but tries to on every write: 10.9 ms per checkpoint update with the default EXTENDED storage
against 2.6 ms with EXTERNAL (measured on the dev machine). A job writes one per iteration.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE checkpoints ALTER COLUMN state SET STORAGE EXTERNAL")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE checkpoints ALTER COLUMN state SET STORAGE EXTENDED")
