"""Bring a database to the newest schema (Alembic, one chain for SQLite and PostgreSQL)."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config


def upgrade(url: str) -> None:
    # The migrations ship as the `migrations` package, so a non-editable install finds them.
    location = resources.files("migrations")
    cfg = Config()
    cfg.set_main_option("script_location", str(location))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")
