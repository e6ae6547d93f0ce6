"""Write the generated dashboards into deploy/grafana/dashboards (or check they are current)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdp_dashboards.build import dashboards

DEFAULT_TARGET = Path("deploy/grafana/dashboards")


def render_files() -> dict[str, str]:
    """Return the text of every dashboard file, by file name."""
    return {name: json.dumps(model, indent=2, sort_keys=True) + "\n" for name, model in dashboards().items()}


def main(argv: list[str] | None = None) -> int:
    """Generate the dashboards; with --check, fail when the files on disk are stale."""
    parser = argparse.ArgumentParser(prog="cdp-dashboards", description=__doc__)
    parser.add_argument("--target", type=Path, default=DEFAULT_TARGET)
    parser.add_argument("--check", action="store_true", help="fail when a file differs from the code")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render_files().items():
        path = args.target / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        args.target.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        sys.stderr.write(f"stale dashboards (run `uv run cdp-dashboards`): {', '.join(stale)}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
