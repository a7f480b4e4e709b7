"""Storage: the database, its tables, migrations and sealed secrets."""
