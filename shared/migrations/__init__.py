"""Alembic migrations of the tracker's database (run by shared/migrate.py, `convbus migrate`)."""
