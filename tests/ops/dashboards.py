"""Reading the generated dashboards: their files, panels and queries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy/grafana/dashboards"


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel, with where it comes from."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Return every dashboard file's JSON, by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield every panel, those nested in collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(substitutions: dict[str, str] | None = None) -> list[PanelQuery]:
    """Return every panel target's expression, with dashboard variables replaced."""
    found = []
    for name, dashboard in load_dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in (substitutions or {}).items():
                    expr = expr.replace(f"${variable}", value)
                found.append(PanelQuery(name, panel["title"], target["refId"], expr))
    return found
