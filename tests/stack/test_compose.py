"""docker-compose.yml and the Prometheus configs stay in step with the local stack."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT, SERVICE_PORTS, SERVICES, STACK_SH, skip_unless_ci

INFRASTRUCTURE = ("kafka", "postgres", "prometheus", "grafana", "mailcatcher")


def run(*cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    exe = shutil.which("docker-compose")
    if exe is None:
        skip_unless_ci("docker-compose is not installed (scripts/stack.sh install installs it)")
    config = yaml.safe_load(run(str(exe), "-f", str(ROOT / "docker-compose.yml"), "config"))
    assert isinstance(config, dict)
    return config


def local_stack_env_keys(service: str) -> set[str]:
    """The variable names scripts/stack.sh gives a service."""
    keys = set(run("bash", str(STACK_SH), "env-keys", service).split())
    assert f"CDP_{service.upper()}_PORT" in keys
    return keys


def test_compose_has_every_service_and_the_infrastructure(compose: dict[str, Any]) -> None:
    names = set(compose["services"])
    missing = set(SERVICES + INFRASTRUCTURE) - names
    assert not missing, f"docker-compose.yml lacks {sorted(missing)}"


@pytest.mark.parametrize("service", SERVICES)
def test_service_environment_matches_the_local_stack(compose: dict[str, Any], service: str) -> None:
    env = compose["services"][service].get("environment") or {}
    missing = local_stack_env_keys(service) - set(env)
    assert not missing, f"{service} in docker-compose.yml lacks {sorted(missing)}"
    assert str(env[f"CDP_{service.upper()}_PORT"]) == str(SERVICE_PORTS[service])
    assert env["CDP_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["CDP_DATABASE_URL"].startswith("postgresql://cdp:cdp@postgres:5432/")
    assert env["CDP_SMTP_URL"] == "smtp://mailcatcher:1025"
    assert env["CDP_PROMETHEUS_URL"] == "http://prometheus:9090"
    for other in SERVICES:
        assert env[f"CDP_{other.upper()}_URL"] == f"http://{other}:{SERVICE_PORTS[other]}"
    assert env["CDP_DEFAULT_WRITE_KEY"] == env["CDP_WRITE_KEY"]
    assert env["CDP_HOST"] == "0.0.0.0", "in a container the service must listen beyond loopback"


@pytest.mark.parametrize("service", SERVICES)
def test_service_is_built_from_the_root_dockerfile(compose: dict[str, Any], service: str) -> None:
    spec = compose["services"][service]
    build = spec["build"]
    assert Path(build["context"]).resolve() == ROOT
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert build["args"]["SERVICE"] == service
    port = SERVICE_PORTS[service]
    published = {str(p.get("target")) if isinstance(p, dict) else str(p) for p in spec["ports"]}
    assert any(str(port) in p for p in published), f"{service} does not publish {port}"
    assert f"127.0.0.1:{port}/readyz" in " ".join(spec["healthcheck"]["test"])
    depends = spec["depends_on"]
    assert {"kafka", "postgres"} <= set(depends)


def test_dockerfile_runs_the_service_module() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "ARG SERVICE" in text
    assert "uv sync --frozen --all-packages --no-dev" in text
    assert "python -m cdp_${CDP_SERVICE}" in text


def test_grafana_is_provisioned(compose: dict[str, Any]) -> None:
    volumes = " ".join(str(v) for v in compose["services"]["grafana"].get("volumes", []))
    assert "deploy/grafana/provisioning/datasources" in volumes
    assert "deploy/grafana/provisioning/dashboards" in volumes
    assert "deploy/grafana/dashboards" in volumes
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (prometheus,) = datasource["datasources"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/cdp.yml").read_text())[
        "providers"
    ]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert (ROOT / "deploy/grafana/dashboards").is_dir()


def scrape_targets(config_file: str) -> dict[str, str]:
    """service label -> target address, for the job that scrapes the services."""
    config = yaml.safe_load((ROOT / "deploy/prometheus" / config_file).read_text())
    found: dict[str, str] = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            service = static.get("labels", {}).get("service")
            if service is None:
                continue
            (target,) = static["targets"]
            assert service not in found, f"{config_file}: {service} is scraped twice"
            found[service] = target
            assert job.get("metrics_path", "/metrics") == "/metrics"
    assert config["global"]["scrape_interval"] == "5s"
    return found


@pytest.mark.parametrize(
    ("config_file", "host"),
    [("prometheus.yml", None), ("prometheus.docker.yml", "compose")],
)
def test_prometheus_config_scrapes_every_service(config_file: str, host: str | None) -> None:
    targets = scrape_targets(config_file)
    assert set(targets) == set(SERVICES)
    for service, target in targets.items():
        expected_host = "127.0.0.1" if host is None else service
        assert target == f"{expected_host}:{SERVICE_PORTS[service]}"


def test_compose_mounts_the_docker_prometheus_config(compose: dict[str, Any]) -> None:
    volumes = " ".join(str(v) for v in compose["services"]["prometheus"].get("volumes", []))
    assert "deploy/prometheus/prometheus.docker.yml" in volumes
    assert "deploy/prometheus/alerts.yml" in volumes


@pytest.mark.parametrize("config_file", ["prometheus.yml", "prometheus.docker.yml"])
def test_prometheus_configs_are_valid(config_file: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_unless_ci("promtool is not installed (it comes with the prometheus package)")
    run(str(promtool), "check", "config", str(ROOT / "deploy/prometheus" / config_file))
