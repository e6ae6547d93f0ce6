"""The generated Grafana dashboards: current with their code, and well-formed for provisioning."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from cdp_dashboards.__main__ import main as generate

from .dashboards import DASHBOARDS, ROOT, load_dashboards, panels

EXPECTED = {"pipeline.json", "services.json", "business.json"}


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return load_dashboards()


def datasource_uid() -> str:
    provisioning = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    (datasource,) = provisioning["datasources"]
    uid: str = datasource["uid"]
    return uid


def test_files_are_generated_from_the_current_code() -> None:
    assert generate(["--check", "--target", str(DASHBOARDS)]) == 0, "run `uv run cdp-dashboards`"


def test_a_stale_file_is_detected(tmp_path: Any) -> None:
    assert generate(["--target", str(tmp_path)]) == 0
    (tmp_path / "pipeline.json").write_text("{}")
    assert generate(["--check", "--target", str(tmp_path)]) == 1


def test_every_dashboard_is_there_with_a_unique_uid_and_title(dashboards: dict[str, dict[str, Any]]) -> None:
    assert set(dashboards) == EXPECTED
    uids = [d["uid"] for d in dashboards.values()]
    titles = [d["title"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    assert len(set(titles)) == len(titles)
    assert all(re.fullmatch(r"[a-z0-9-]{1,40}", uid) for uid in uids)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_are_well_formed(dashboards: dict[str, dict[str, Any]], name: str) -> None:
    dashboard = dashboards[name]
    uid = datasource_uid()
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
    data_panels = [panel for panel in panels(dashboard) if panel["type"] != "row"]
    assert data_panels, f"{name} has no panel"
    for panel in data_panels:
        where = f"{name} / {panel.get('title')}"
        assert panel.get("title"), f"{where}: no title"
        assert panel.get("description"), f"{where}: no description"
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, where
        targets = panel.get("targets") or []
        assert targets, f"{where}: no target"
        ref_ids = [target["refId"] for target in targets]
        assert len(set(ref_ids)) == len(ref_ids), f"{where}: refIds {ref_ids}"
        assert all(ref_ids), f"{where}: an empty refId"
        for target in targets:
            assert target.get("expr", "").strip(), f"{where}: a target has no expr"
            assert target["datasource"]["uid"] == uid, where
            assert target["expr"].count("(") == target["expr"].count(")"), f"{where}: unbalanced"
        grid = panel["gridPos"]
        assert grid["x"] >= 0, f"{where}: outside the grid"
        assert grid["x"] + grid["w"] <= 24, f"{where}: outside the grid"
        assert grid["h"] > 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_do_not_overlap(dashboards: dict[str, dict[str, Any]], name: str) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboards[name]["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_variable_a_query_uses_is_defined(dashboards: dict[str, dict[str, Any]], name: str) -> None:
    dashboard = dashboards[name]
    defined = {variable["name"] for variable in dashboard.get("templating", {}).get("list", [])}
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            used = set(re.findall(r"\$(\w+)", target["expr"]))
            assert used <= defined, f"{name} / {panel['title']} uses undefined {used - defined}"


def test_no_query_groups_by_a_personal_label(dashboards: dict[str, dict[str, Any]]) -> None:
    for dashboard in dashboards.values():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                assert not re.search(r"\b(email|user_id|userId|phone|anonymous_id)\b", target["expr"])


def test_grafana_provisioning_loads_the_generated_folder() -> None:
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/cdp.yml").read_text())
    (cdp,) = provider["providers"]
    mount = cdp["options"]["path"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    volumes = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{mount}:ro" in volumes
