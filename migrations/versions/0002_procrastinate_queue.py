"""procrastinate's job-queue schema (PostgreSQL only; the embedded SQLite mode runs jobs
in-process and needs no queue tables)

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    exists = bind.exec_driver_sql("SELECT to_regclass('procrastinate_jobs')").scalar()
    if exists is None:
        from procrastinate.schema import SchemaManager

        # The schema of the installed procrastinate version, applied as one script.
        bind.connection.dbapi_connection.execute(SchemaManager.get_schema())


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(
            "DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers, "
            "procrastinate_jobs, procrastinate_workers CASCADE"
        )
        # The schema script also creates functions and enum and composite types: whichever
        # the installed procrastinate version made, drop every one so upgrading again works.
        op.execute(
            """
            DO $$
            DECLARE r record;
            BEGIN
              FOR r IN SELECT p.oid::regprocedure AS f FROM pg_proc p
                       JOIN pg_namespace n ON n.oid = p.pronamespace
                       WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate%'
              LOOP EXECUTE 'DROP FUNCTION IF EXISTS ' || r.f || ' CASCADE'; END LOOP;
              FOR r IN SELECT t.typname FROM pg_type t
                       JOIN pg_namespace n ON n.oid = t.typnamespace
                       WHERE n.nspname = current_schema() AND t.typtype IN ('e', 'c', 'd')
                         AND t.typname LIKE 'procrastinate%'
              LOOP EXECUTE 'DROP TYPE IF EXISTS ' || quote_ident(r.typname) || ' CASCADE';
              END LOOP;
            END $$;
            """
        )
