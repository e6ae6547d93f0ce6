"""Shared helpers of the tests of the run-time stack (scripts/stack.sh, deploy/, compose)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / ".run"
STACK_SH = ROOT / "scripts" / "stack.sh"

SERVICES = ("ingest", "profile", "segment", "campaign", "consent")
SERVICE_PORTS = {"ingest": 8001, "profile": 8002, "segment": 8003, "campaign": 8004, "consent": 8005}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_unless_ci(reason: str) -> None:
    """Skip on a developer's machine; in CI the same condition is a failure."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure)", pytrace=False)
    pytest.skip(reason)


def read_env_file(path: Path) -> list[tuple[str, str]]:
    """KEY=value lines of an env file, in order (comments and blank lines ignored)."""
    pairs = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a KEY=value line: {raw!r}"
        pairs.append((key, value))
    return pairs
