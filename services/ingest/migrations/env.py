"""Alembic environment of the ingest service."""

from cdp_common.migrations import run_alembic_env

run_alembic_env()
