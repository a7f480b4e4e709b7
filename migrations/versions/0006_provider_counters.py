"""Provider counters: running totals by provider that the ledger adds to with every request

``/metrics`` reads them instead of summing the ledger at every scrape. The totals start from
the ledger's history (requests by outcome, images sent and answered, cost); retries and
rate-limit waits were not recorded before and start at zero.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"


def upgrade() -> None:
    op.create_table(
        "provider_counters",
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("label", sa.String(40), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("provider", "name", "label", name=op.f("pk_provider_counters")),
    )
    op.execute(
        "INSERT INTO provider_counters (provider, name, label, value) "
        "SELECT provider, 'requests', outcome, COUNT(*) FROM ledger GROUP BY provider, outcome"
    )
    for name, column in (
        ("images_sent", "images"),
        ("images", "answered"),
        ("cost_usd", "cost_usd"),
    ):
        op.execute(
            "INSERT INTO provider_counters (provider, name, label, value) "
            f"SELECT provider, '{name}', '', SUM({column}) FROM ledger GROUP BY provider"
        )


def downgrade() -> None:
    op.drop_table("provider_counters")
