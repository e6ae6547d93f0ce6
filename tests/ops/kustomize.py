"""A small kustomize for the tests: renders deploy/k8s without the kustomize binary.

It understands what deploy/k8s uses (resources, namespace, labels, replicas, images,
strategic-merge patches whose lists of named items merge by name); anything else in a
kustomization is an error, so the manifests cannot silently outgrow it. Where
`kubectl` is installed, the tests check that it renders the same objects.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "replicas", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Return the YAML documents of a file, without empty ones."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def key(resource: dict[str, Any]) -> tuple[str, str]:
    """Identify a resource by kind and name."""
    return resource["kind"], resource["metadata"]["name"]


def merge(base: Any, patch: Any) -> Any:
    """Merge a strategic-merge patch into a resource (named list items merge by name)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for field, value in patch.items():
            merged[field] = merge(base[field], value) if field in base else copy.deepcopy(value)
        return merged
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in patch)
    ):
        merged_list = [copy.deepcopy(item) for item in base]
        names = [item.get("name") if isinstance(item, dict) else None for item in merged_list]
        for item in patch:
            if item["name"] in names:
                index = names.index(item["name"])
                merged_list[index] = merge(merged_list[index], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = resource.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("containers", []), *spec.get("initContainers", [])]


def build(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization directory into its resources."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}: fields this renderer does not know: {sorted(unknown)}")
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        resources.extend(build(target) if target.is_dir() else load_documents(target))
    by_key = {key(resource): index for index, resource in enumerate(resources)}
    for patch_entry in kustomization.get("patches", []):
        for patch in load_documents(directory / patch_entry["path"]):
            index = by_key[key(patch)]
            resources[index] = merge(resources[index], patch)
    for pairs in kustomization.get("labels", []):
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(pairs["pairs"])
    counts = {entry["name"]: entry["count"] for entry in kustomization.get("replicas", [])}
    images = {entry["name"]: entry for entry in kustomization.get("images", [])}
    namespace = kustomization.get("namespace")
    for resource in resources:
        name = resource["metadata"]["name"]
        if resource["kind"] == "Deployment" and name in counts:
            resource["spec"]["replicas"] = counts[name]
        for container in _containers(resource):
            image, _, tag = container["image"].partition(":")
            if image in images:
                rule = images[image]
                container["image"] = f"{rule.get('newName', image)}:{rule.get('newTag', tag)}"
        if namespace and resource["kind"] not in CLUSTER_SCOPED:
            resource["metadata"]["namespace"] = namespace
    return resources
