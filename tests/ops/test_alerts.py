"""The Prometheus alert rules: valid, each one covered by promtool unit tests, on metrics that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .dashboards import ROOT, panel_queries

ALERTS = ROOT / "deploy/prometheus/alerts.yml"
RULE_TESTS = ROOT / "deploy/prometheus/tests"
SOURCES = [*ROOT.glob("libs/*/src"), *ROOT.glob("services/*/src")]
BUILT_IN = {"up"}


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed (scripts/stack.sh install installs prometheus)", pytrace=False)
    return exe


def run_promtool(*args: str) -> str:
    proc = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def exported_metric_names() -> set[str]:
    """Names of every Prometheus object the platform's code defines, with their series suffixes."""
    names: set[str] = set()
    pattern = re.compile(r"(?:Counter|Gauge|Histogram|Summary)\(\s*\"(cdp_[a-z0-9_]+)\"")
    for source in SOURCES:
        for path in source.rglob("*.py"):
            for name in pattern.findall(path.read_text()):
                names.update({name, f"{name}_bucket", f"{name}_count", f"{name}_sum"})
    return names


def metric_names(expr: str) -> set[str]:
    return {
        name for name in re.findall(r"\b([a-z_][a-z0-9_]*)\b(?=\s*[{\[)])", expr) if name.startswith("cdp_")
    }


def test_rules_are_valid() -> None:
    assert "SUCCESS" in run_promtool("check", "rules", str(ALERTS))


def test_rule_unit_tests_pass() -> None:
    files = sorted(str(path) for path in RULE_TESTS.glob("*.yml"))
    assert files
    assert "SUCCESS" in run_promtool("test", "rules", *files)


def test_every_alert_has_a_firing_test_case() -> None:
    tested: set[str] = set()
    for path in RULE_TESTS.glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    alerts = {rule["alert"] for rule in rules()}
    assert alerts - tested == set(), "alerts without a test that makes them fire"


def test_every_alert_has_a_severity_and_an_explanation() -> None:
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_every_alert_is_explained_in_the_operations_guide() -> None:
    guide = (ROOT / "docs/operations.md").read_text()
    missing = [rule["alert"] for rule in rules() if f"`{rule['alert']}`" not in guide]
    assert missing == [], "the alerts table of docs/operations.md lacks these alerts"


def test_alerts_and_panels_use_only_metrics_the_code_exports() -> None:
    exported = exported_metric_names() | BUILT_IN
    used = {name for rule in rules() for name in metric_names(rule["expr"])}
    used |= {name for query in panel_queries() for name in metric_names(query.expr)}
    assert used, "no metric found in the rules and panels"
    assert used - exported == set(), "metrics no service defines"


def test_metric_names_are_found_in_an_expression() -> None:
    expr = 'sum by (group) (rate(cdp_dlq_messages_total{group="x"}[5m])) / max(cdp_outbox_backlog_messages)'
    assert metric_names(expr) == {"cdp_dlq_messages_total", "cdp_outbox_backlog_messages"}


def test_the_local_prometheus_loads_the_rules() -> None:
    for config in ("prometheus.yml", "prometheus.docker.yml"):
        loaded = yaml.safe_load((ROOT / "deploy/prometheus" / config).read_text())
        assert loaded["rule_files"] == ["alerts.yml"], config
        assert Path(ROOT / "deploy/prometheus/alerts.yml").exists()
