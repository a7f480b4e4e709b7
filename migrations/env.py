"""Alembic environment: the URL comes from the caller's config (``app.storage.migrate``) or from
settings (``REPROGRAM_DATABASE_URL``); types are compared; SQLite gets batch mode so the
same chain runs on both databases."""

from alembic import context

from app.config.settings import Settings
from app.storage.db import make_engine
from app.storage.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings().db_url


def run_migrations_offline() -> None:
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        literal_binds=True,
        compare_type=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            compare_type=True,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
