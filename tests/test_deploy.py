"""The kustomize manifests: every overlay renders, validates offline, and grants no more than needed."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from autoscaler.config import parse_config
from tests.conftest import PROJECT_ROOT, require_binary

DEPLOY = PROJECT_ROOT / "deploy"
OVERLAYS = ("controller", "with-adapter", "dry-run")
KUBERNETES_VERSION = "1.32.0"
NAMESPACE = "grove-autoscaler"
CONFIG_PATH = "/etc/grove-autoscaler/config.yaml"

GROVE_PLURALS = ("podcliquesets", "podcliquescalinggroups", "podcliques")

# (API group, resource) -> verbs the controller may ever hold. Leases only in a namespaced Role.
ALLOWED_RULES: dict[tuple[str, str], set[str]] = {
    **{("grove.io", plural): {"get", "list", "watch"} for plural in GROVE_PLURALS},
    **{("grove.io", f"{plural}/scale"): {"get", "patch", "update"} for plural in GROVE_PLURALS},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list"},
    ("", "events"): {"create", "patch"},
    ("coordination.k8s.io", "leases"): {"create", "get", "update"},
}

# Roles defined by Kubernetes that a binding may reference: (binding kind, role kind, role name, binding namespace).
ALLOWED_EXTERNAL_ROLES = {
    ("ClusterRoleBinding", "ClusterRole", "system:auth-delegator", None),
    ("RoleBinding", "Role", "extension-apiserver-authentication-reader", "kube-system"),
}


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = require_binary("kubectl")
    result = subprocess.run([kubectl, "kustomize", str(DEPLOY / overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed: {result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in ("base", *(f"overlays/{name}" for name in OVERLAYS))}


def one(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [doc for doc in documents if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


def container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(documents, "Deployment", "grove-autoscaler")
    [controller] = deployment["spec"]["template"]["spec"]["containers"]
    return controller


# --- rendering and schema validation --------------------------------------------------------


@pytest.mark.parametrize("overlay", ["base", *(f"overlays/{name}" for name in OVERLAYS)])
def test_overlay_validates_against_kubernetes_schemas(rendered, overlay: str) -> None:
    import kubernetes_validate

    documents = rendered[overlay]
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_validator_rejects_invalid_manifest(rendered) -> None:
    import kubernetes_validate

    deployment = copy.deepcopy(one(rendered["overlays/controller"], "Deployment"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment["spec"]["replicas"] = 2
    deployment["spec"]["unknownField"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# --- RBAC -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_within_allow_list(rendered, overlay: str) -> None:
    documents = rendered[f"overlays/{overlay}"]
    for role in of_kind(documents, "ClusterRole") + of_kind(documents, "Role"):
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule, f"{role['metadata']['name']} grants non-resource URLs"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    allowed = ALLOWED_RULES.get((group, resource))
                    assert allowed is not None, f"{role['kind']} {role['metadata']['name']} grants {group or 'core'}/{resource}"
                    extra = set(rule["verbs"]) - allowed
                    assert not extra, f"{role['metadata']['name']} grants {sorted(extra)} on {group or 'core'}/{resource}"
                    if resource == "leases":
                        assert role["kind"] == "Role", "leases must be granted by a namespaced Role"
                        assert role["metadata"]["namespace"] == NAMESPACE
                        if set(rule["verbs"]) & {"get", "update"}:
                            assert rule.get("resourceNames") == ["grove-autoscaler"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bindings_reference_known_roles(rendered, overlay: str) -> None:
    documents = rendered[f"overlays/{overlay}"]
    defined = {(doc["kind"], doc["metadata"]["name"]) for doc in of_kind(documents, "ClusterRole") + of_kind(documents, "Role")}
    for binding in of_kind(documents, "ClusterRoleBinding") + of_kind(documents, "RoleBinding"):
        reference = binding["roleRef"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "grove-autoscaler", "namespace": NAMESPACE}]
        if (reference["kind"], reference["name"]) in defined:
            continue
        key = (binding["kind"], reference["kind"], reference["name"], binding["metadata"].get("namespace"))
        assert key in ALLOWED_EXTERNAL_ROLES, f"{binding['kind']} {binding['metadata']['name']} binds {reference['kind']} {reference['name']}"


def test_controller_rbac_covers_its_calls(rendered) -> None:
    documents = rendered["overlays/controller"]
    granted: set[tuple[str, str, str]] = set()
    for role in of_kind(documents, "ClusterRole") + of_kind(documents, "Role"):
        for rule in role["rules"]:
            granted |= {(group, resource, verb) for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}

    needed = {
        *(("grove.io", plural, "list") for plural in GROVE_PLURALS),
        *(("grove.io", f"{plural}/scale", verb) for plural in GROVE_PLURALS for verb in ("get", "patch")),
        ("autoscaling", "horizontalpodautoscalers", "list"),
        ("", "events", "create"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
    }
    assert needed - granted == set()


def test_only_adapter_overlay_may_review_access(rendered) -> None:
    for overlay in ("controller", "dry-run"):
        names = {binding["roleRef"]["name"] for binding in of_kind(rendered[f"overlays/{overlay}"], "ClusterRoleBinding")}
        assert "system:auth-delegator" not in names
    names = {binding["roleRef"]["name"] for binding in of_kind(rendered["overlays/with-adapter"], "ClusterRoleBinding")}
    assert "system:auth-delegator" in names
    reader = one(rendered["overlays/with-adapter"], "RoleBinding", "grove-autoscaler-auth-reader")
    assert reader["metadata"]["namespace"] == "kube-system"


# --- Deployment -----------------------------------------------------------------------------


def test_deployment_hardened(rendered) -> None:
    documents = rendered["overlays/controller"]
    deployment = one(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    controller = container(documents)

    assert deployment["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == "grove-autoscaler"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert controller["securityContext"]["readOnlyRootFilesystem"] is True
    assert controller["securityContext"]["allowPrivilegeEscalation"] is False
    assert controller["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert controller["resources"]["requests"]["cpu"]
    assert controller["resources"]["requests"]["memory"]
    assert controller["resources"]["limits"]["memory"]
    assert controller["image"] == "ghcr.io/grove-autoscaler/grove-autoscaler:0.1.0"


def test_deployment_probes_and_ports(rendered) -> None:
    controller = container(rendered["overlays/controller"])
    ports = {port["name"]: port["containerPort"] for port in controller["ports"]}
    assert ports == {"http-metrics": 8080}
    assert controller["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert controller["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}

    args = controller["args"]
    assert controller["command"] == ["grove-autoscaler"]
    assert args[:3] == ["run", "--config", CONFIG_PATH]
    assert args[args.index("--metrics-port") + 1] == "8080"
    assert "--leader-elect" in args
    assert args[args.index("--log-format") + 1] == "json"


def test_deployment_mounts_config_and_tmp(rendered) -> None:
    documents = rendered["overlays/controller"]
    deployment = one(documents, "Deployment")
    controller = container(documents)
    mounts = {mount["mountPath"]: mount["name"] for mount in controller["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}

    assert str(Path(CONFIG_PATH).parent) in mounts
    config_volume = volumes[mounts[str(Path(CONFIG_PATH).parent)]]
    assert config_volume["configMap"]["name"] == "grove-autoscaler-config"
    assert "emptyDir" in volumes[mounts["/tmp"]]

    env = {variable["name"]: variable["valueFrom"]["fieldRef"]["fieldPath"] for variable in controller["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}


def test_configmap_holds_valid_config(rendered) -> None:
    configmap = one(rendered["overlays/controller"], "ConfigMap", "grove-autoscaler-config")
    assert Path(CONFIG_PATH).name in configmap["data"]
    config = parse_config(yaml.safe_load(configmap["data"][Path(CONFIG_PATH).name]), "deploy ConfigMap")
    assert [target.name for target in config.targets] == ["decode"]


def test_selectors_match_pod_labels(rendered) -> None:
    documents = rendered["overlays/with-adapter"]
    pod_labels = one(documents, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service_selector = one(documents, "Service")["spec"]["selector"]
    budget_selector = one(documents, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    deployment_selector = one(documents, "Deployment")["spec"]["selector"]["matchLabels"]
    for selector in (service_selector, budget_selector, deployment_selector):
        assert selector.items() <= pod_labels.items()


def test_pod_disruption_budget_allows_one_eviction(rendered) -> None:
    budget = one(rendered["overlays/controller"], "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# --- overlays -------------------------------------------------------------------------------


def test_with_adapter_registers_apiservice(rendered) -> None:
    documents = rendered["overlays/with-adapter"]
    apiservice = one(documents, "APIService", "v1beta1.external.metrics.k8s.io")
    spec = apiservice["spec"]
    assert spec["group"] == "external.metrics.k8s.io"
    assert spec["version"] == "v1beta1"
    assert spec["service"] == {"name": "grove-autoscaler", "namespace": NAMESPACE, "port": 443}

    service_ports = {port["name"]: port for port in one(documents, "Service")["spec"]["ports"]}
    assert service_ports["https"]["port"] == 443
    assert service_ports["https"]["targetPort"] == "https"

    controller = container(documents)
    assert {port["name"]: port["containerPort"] for port in controller["ports"]}["https"] == 6443
    args = controller["args"]
    assert "--adapter" in args
    assert args[args.index("--adapter-port") + 1] == "6443"


@pytest.mark.parametrize("overlay", ["controller", "dry-run"])
def test_overlay_without_apiservice(rendered, overlay: str) -> None:
    documents = rendered[f"overlays/{overlay}"]
    assert of_kind(documents, "APIService") == []
    assert "--adapter" not in container(documents)["args"]


def test_dry_run_writes_nothing(rendered) -> None:
    documents = rendered["overlays/dry-run"]
    assert one(documents, "Deployment")["spec"]["replicas"] == 1
    args = container(documents)["args"]
    assert "--dry-run" in args
    assert "--leader-elect" not in args
    assert of_kind(documents, "Role") == []

    write_verbs = {"create", "update", "patch", "delete", "deletecollection"}
    for role in of_kind(documents, "ClusterRole"):
        for rule in role["rules"]:
            assert not set(rule["verbs"]) & write_verbs, f"dry-run grants {rule}"


# --- example PodCliqueSet -------------------------------------------------------------------

EXAMPLE = DEPLOY / "examples" / "podcliqueset-external-metric.yaml"


def test_example_podcliqueset_accepted_by_api(kube_emulator) -> None:
    document = yaml.safe_load(EXAMPLE.read_text())
    kube_emulator.create("namespaces", {"metadata": {"name": "llm"}})
    api = client.CustomObjectsApi(kube_emulator.api_client())
    created = api.create_namespaced_custom_object(
        "grove.io", "v1alpha1", "llm", "podcliquesets", document, field_validation="Strict"
    )
    [decode] = [clique for clique in created["spec"]["template"]["cliques"] if clique["name"] == "decode"]
    [metric] = decode["spec"]["autoScalingConfig"]["metrics"]
    assert metric["external"]["metric"]["name"] == "grove_autoscaler_desired_replicas"
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}


def test_example_metrics_valid_in_hpa() -> None:
    import kubernetes_validate

    document = yaml.safe_load(EXAMPLE.read_text())
    [decode] = [clique for clique in document["spec"]["template"]["cliques"] if clique["name"] == "decode"]
    scaling = decode["spec"]["autoScalingConfig"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "llm-disagg-0-decode", "namespace": "llm"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "grove.io/v1alpha1", "kind": "PodClique", "name": "llm-disagg-0-decode"},
            "minReplicas": scaling["minReplicas"],
            "maxReplicas": scaling["maxReplicas"],
            "metrics": scaling["metrics"],
        },
    }
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    selector = scaling["metrics"][0]["external"]["metric"]["selector"]["matchLabels"]
    assert selector["grove_io_target_name"] == f"{document['metadata']['name']}-0-decode"


# --- container image ------------------------------------------------------------------------

DOCKERFILE = PROJECT_ROOT / "Dockerfile"


def dockerfile_stages() -> list[list[str]]:
    """Return the Dockerfile's instructions (continuation lines joined), split by FROM."""
    lines = DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
    instructions = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    stages: list[list[str]] = []
    for instruction in instructions:
        if instruction.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_dockerfile_final_stage() -> None:
    text = DOCKERFILE.read_text()
    builder, final = dockerfile_stages()
    assert builder[0].endswith(" AS builder")
    assert "ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm" in text

    assert 'ENTRYPOINT ["grove-autoscaler"]' in final
    [user] = [instruction for instruction in final if instruction.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("0", "root")
    installs = [instruction for instruction in final if instruction.startswith("RUN ")]
    assert len(installs) == 1
    assert "--no-index --find-links /wheels grove-autoscaler" in installs[0]
    for compiler in ("gcc", "build-essential", "apt-get"):
        assert compiler not in " ".join(final)


def test_dockerignore_keeps_build_inputs() -> None:
    patterns = (PROJECT_ROOT / ".dockerignore").read_text().split()
    [builder, _] = dockerfile_stages()
    copied = [word for instruction in builder if instruction.startswith("COPY ") for word in instruction.split()[1:-1]]
    assert copied == ["pyproject.toml", "README.md", "LICENSE", "autoscaler", "policies", "metrics"]
    for source in copied:
        assert f"!{source}" in patterns or f"!{source}/" in patterns


def test_wheel_contains_packages(tmp_path: Path) -> None:
    """Build the wheel the image installs, from exactly the files the Dockerfile copies."""
    [builder, _] = dockerfile_stages()
    copied = [word for instruction in builder if instruction.startswith("COPY ") for word in instruction.split()[1:-1]]
    source = tmp_path / "src"
    source.mkdir()
    for name in copied:
        path = PROJECT_ROOT / name
        assert path.exists(), f"the Dockerfile copies {name}, which does not exist (pyproject.toml names README.md as readme)"
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (source / name).write_bytes(path.read_bytes())

    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = list((tmp_path / "dist").glob("grove_autoscaler-*.whl"))

    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "autoscaler/__init__.py",
        "autoscaler/cli.py",
        "autoscaler/leader.py",
        "autoscaler/ops.py",
        "autoscaler/adapter/__init__.py",
        "autoscaler/adapter/server.py",
        "policies/__init__.py",
        "metrics/__init__.py",
        "metrics/sample.py",
    ):
        assert module in names, f"{module} missing from {wheel.name}"
    assert not any(name.startswith("tests/") for name in names)
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    [entry_points] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "grove-autoscaler = autoscaler.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
