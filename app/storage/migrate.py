"""Bring a database to the newest schema (Alembic, one chain for SQLite and PostgreSQL)."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config


def _config(url: str) -> Config:
    # The migrations ship as the `migrations` package, so a non-editable install finds them.
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("migrations")))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(_config(url), revision)
