"""Alembic migrations of the tracker's database (run by shared/schema.py, `convbus migrate`)."""
