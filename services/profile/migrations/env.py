"""Alembic environment of the profile service."""

from cdp_common.migrations import run_alembic_env

run_alembic_env()
