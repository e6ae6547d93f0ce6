"""The Kubernetes manifests (deploy/k8s): valid against the Kubernetes schemas, and complete.

The kustomizations are rendered by tests/ops/kustomize.py; where `kubectl` is
installed, its built-in kustomize must render the same objects.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_schemas

from . import kustomize
from .dashboards import ROOT

K8S = ROOT / "deploy/k8s"
BUILDS = {"base": K8S / "base", "production": K8S / "overlays/production"}
SERVICES = {"ingest": 8001, "profile": 8002, "segment": 8003, "campaign": 8004, "consent": 8005}
PRODUCTION_REPLICAS = {"ingest": 3, "profile": 3, "segment": 2, "campaign": 2, "consent": 2}
# Keys scripts/stack.sh gives a local service that a cluster sets differently or not at all.
LOCAL_ONLY = {"CDP_PROMETHEUS_URL"}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def build(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name: str = request.param
    return name, kustomize.build(BUILDS[name])


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def test_every_resource_is_valid_against_the_kubernetes_schemas(
    build: tuple[str, list[dict[str, Any]]],
) -> None:
    _, resources = build
    version = kubernetes_schemas.latest_version()
    for resource in resources:
        kubernetes_schemas.validate(resource, version, strict=True)


def test_an_invalid_manifest_is_refused() -> None:
    deployment = by_kind(kustomize.build(BUILDS["base"]), "Deployment")["ingest"]
    broken = kustomize.merge(deployment, {"spec": {"replicas": "three"}})
    with pytest.raises(kubernetes_schemas.ValidationError):
        kubernetes_schemas.validate(broken, kubernetes_schemas.latest_version(), strict=True)
    typo = kustomize.merge(deployment, {"spec": {"replica": 3}})
    with pytest.raises(kubernetes_schemas.ValidationError):
        kubernetes_schemas.validate(typo, kubernetes_schemas.latest_version(), strict=True)


def test_each_service_is_a_deployment_with_probes_resources_and_a_service(
    build: tuple[str, list[dict[str, Any]]],
) -> None:
    name, resources = build
    deployments = by_kind(resources, "Deployment")
    services = by_kind(resources, "Service")
    assert set(deployments) == set(SERVICES)
    for service, port in SERVICES.items():
        deployment = deployments[service]
        replicas = deployment["spec"]["replicas"]
        assert replicas >= 2, f"{service}: {replicas} replica(s)"
        if name == "production":
            assert replicas == PRODUCTION_REPLICAS[service]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        container = container_of(deployment)
        assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, f"{service} {kind}"
        assert {"name": f"CDP_{service.upper()}_PORT", "value": str(port)} in container["env"]
        exposed = services[service]
        assert exposed["spec"]["selector"].items() <= pod_labels.items(), f"{service}: selector"
        assert exposed["spec"]["ports"][0]["port"] == port
        if name == "production":
            assert container["image"] == f"registry.example.com/cdp/{service}:0.1.0"


def test_configuration_comes_from_a_config_map_and_a_secret(
    build: tuple[str, list[dict[str, Any]]],
) -> None:
    _, resources = build
    config_maps = by_kind(resources, "ConfigMap")
    secrets = by_kind(resources, "Secret")
    for service in SERVICES:
        container = container_of(by_kind(resources, "Deployment")[service])
        provided = {entry["name"] for entry in container.get("env", [])}
        for source in container["envFrom"]:
            if "configMapRef" in source:
                provided |= set(config_maps[source["configMapRef"]["name"]]["data"])
            else:
                secret = secrets[source["secretRef"]["name"]]
                provided |= set(secret.get("stringData", {})) | set(secret.get("data", {}))
        assert provided & set(secrets["cdp-secrets"]["stringData"]) >= {"CDP_ADMIN_TOKEN", "CDP_HASH_KEY"}
        assert "CDP_DATABASE_URL" in secrets["cdp-secrets"]["stringData"], "the password is a secret"
        needed = set(
            subprocess.run(
                ["bash", str(ROOT / "scripts/stack.sh"), "env-keys", service],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout.split()
        )
        assert needed - LOCAL_ONLY - provided == set(), f"{service} lacks settings"
        assert config_maps["cdp-config"]["data"]["CDP_HOST"] == "0.0.0.0"


def test_kafka_and_postgres_are_external_services(build: tuple[str, list[dict[str, Any]]]) -> None:
    name, resources = build
    services = by_kind(resources, "Service")
    kafka = services["kafka"]["spec"]
    assert kafka["type"] == "ExternalName"
    assert kafka["externalName"]
    postgres = services["postgres"]["spec"]
    assert "selector" not in postgres, "PostgreSQL is not run in the cluster"
    (endpoints,) = by_kind(resources, "EndpointSlice").values()
    assert endpoints["metadata"]["labels"]["kubernetes.io/service-name"] == "postgres"
    assert not by_kind(resources, "StatefulSet"), "no broker or database is run in the cluster"
    config = by_kind(resources, "ConfigMap")["cdp-config"]["data"]
    assert config["CDP_KAFKA_BOOTSTRAP"] == "kafka:9092"
    if name == "production":
        assert int(config["CDP_TOPIC_PARTITIONS"]) >= max(PRODUCTION_REPLICAS.values())
        assert all(r["metadata"].get("namespace") == "cdp" for r in resources if r["kind"] != "Namespace")


def normalised(resources: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    return {kustomize.key(resource): resource for resource in resources}


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_kubectl_kustomize_renders_the_same(name: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the manifests were rendered by tests/ops/kustomize.py only")
    proc = subprocess.run(
        [kubectl, "kustomize", str(BUILDS[name])], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    rendered = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    assert normalised(rendered) == normalised(kustomize.build(BUILDS[name]))


def test_the_renderer_refuses_what_it_does_not_understand(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: []\n")
    with pytest.raises(ValueError, match="configMapGenerator"):
        kustomize.build(tmp_path)
