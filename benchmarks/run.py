"""Run the benchmarks against the stack of `make up` and write the figures as JSON.

Each module `benchmarks/bench_*.py` defines `NAME` and `async def run(env) -> dict`,
where `env` holds the keys of `.run/dev.env`. Every figure is reported beside a
baseline measured in the same run, because absolute times on a shared machine are
noise. Results go to `bench-results/<UTC time>.json` and are printed.

    python benchmarks/run.py              # every benchmark
    python benchmarks/run.py pipeline     # only those whose NAME is given
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def load_env() -> dict[str, str]:
    """Read the running stack's `.run/dev.env`."""
    path = ROOT / ".run" / "dev.env"
    if not path.exists():
        raise SystemExit("the stack is not running: start it with `make up`")
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


# The stack's latency is measured before anything floods it: the ingest benchmark leaves
# hundreds of thousands of events on the dev stack's event topic for profile to work off.
FIRST = ("segment", "campaign", "consent", "profile", "pipeline")
# Benchmarks that build large bases of their own go after the rest, so they disturb nothing.
LAST = ("duplicates", "scale")


def discover() -> list[Any]:
    """Import every benchmark module, those measuring the live stack's latency first."""
    modules = []
    for path in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return sorted(modules, key=_order)


def _order(module: Any) -> int:
    """Where a benchmark runs: FIRST in their order, then the rest, then LAST in their order."""
    if module.NAME in FIRST:
        return FIRST.index(module.NAME)
    if module.NAME in LAST:
        return len(FIRST) + 1 + LAST.index(module.NAME)
    return len(FIRST)


async def main(selected: list[str]) -> None:
    """Run the selected benchmarks one after another and record the figures."""
    env = load_env()
    results: dict[str, Any] = {}
    for module in discover():
        if selected and module.NAME not in selected:
            continue
        sys.stderr.write(f"running {module.NAME} ...\n")
        results[module.NAME] = await module.run(env)
        sys.stderr.write(json.dumps(results[module.NAME], indent=2) + "\n")
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    path = out / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps({"time": datetime.now(UTC).isoformat(), "results": results}, indent=2) + "\n")
    sys.stdout.write(json.dumps(results, indent=2) + f"\nwritten to {path.relative_to(ROOT)}\n")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
