"""Tokens can be revoked: ``revoked_at`` and a ``hint`` (last 4 characters) on tokens

Authentication reads the token row on every request (no cache to go stale), so a revoked
token is refused at once by every API process.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"


def upgrade() -> None:
    op.add_column("tokens", sa.Column("hint", sa.String(8), nullable=True))
    op.add_column("tokens", sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("tokens", "revoked_at")
    op.drop_column("tokens", "hint")
