"""Other autoscalers of a target: Grove's template configs, HPAs, and managedFields writers."""

from __future__ import annotations

import copy

import pytest
import yaml
from kubernetes import client

from autoscaler.coexistence import (
    CoexistenceError,
    TemplateMatch,
    find_conflicts,
    match_template,
    other_writers,
    parse_kind,
    replica_writers,
)
from autoscaler.kube import KubeClient
from autoscaler.targets import Kind


def load_sample(shared_dir, name: str) -> dict:
    documents = [doc for doc in yaml.safe_load_all((shared_dir / "grove" / name).read_text()) if doc]
    return documents[0]


@pytest.fixture
def simple1(shared_dir) -> dict:
    pcs = copy.deepcopy(load_sample(shared_dir, "simple1.yaml"))
    pcs["metadata"]["namespace"] = "llm"
    return pcs


@pytest.fixture
def disaggregated(shared_dir) -> dict:
    pcs = copy.deepcopy(load_sample(shared_dir, "multinode-disaggregated-with-frontend.yaml"))
    pcs["metadata"]["namespace"] = "llm"
    return pcs


def hpa(name: str, kind: str, target: str, *, namespace="llm", labels=None, api_version="grove.io/v1alpha1") -> dict:
    reference = {"kind": kind, "name": target}
    if api_version is not None:
        reference["apiVersion"] = api_version
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {"scaleTargetRef": reference, "minReplicas": 1, "maxReplicas": 5},
    }


def grove_hpa(kind: str, target: str) -> dict:
    labels = {"app.kubernetes.io/component": "pcs-hpa", "app.kubernetes.io/managed-by": "grove-operator"}
    return hpa(target, kind, target, labels=labels)


# --- Template configuration -------------------------------------------------------------------

# Each case: name, kind, object name, expected reasons (without HPAs).
TEMPLATE_CASES = [
    (
        "clique with autoScalingConfig",
        "PodClique",
        "simple1-0-pca",
        ["PodCliqueSet simple1 template clique pca has autoScalingConfig, so Grove runs an HPA on podclique simple1-0-pca"],
    ),
    ("clique without config", "PodClique", "simple1-0-pcd", []),
    (
        "group with scaleConfig",
        "PodCliqueScalingGroup",
        "simple1-2-sga",
        ["PodCliqueSet simple1 template scaling group sga has scaleConfig, so Grove runs an HPA on podcliquescalinggroup simple1-2-sga"],
    ),
    ("clique inside scaled group", "PodClique", "simple1-0-sga-1-pcb", []),
    ("podcliqueset itself", "PodCliqueSet", "simple1", []),
]


@pytest.mark.parametrize(("kind", "name", "expected"), [case[1:] for case in TEMPLATE_CASES], ids=[case[0] for case in TEMPLATE_CASES])
def test_template_conflicts(simple1, kind, name, expected):
    assert find_conflicts(kind, name, simple1, []) == expected


def test_group_without_scale_config(disaggregated):
    assert find_conflicts(Kind.PODCLIQUESCALINGGROUP, "mn-disagg-0-prefill", disaggregated, []) == []


# --- HPAs -------------------------------------------------------------------------------------


def test_grove_hpa_reported(disaggregated):
    hpas = [grove_hpa("PodCliqueScalingGroup", "mn-disagg-0-decode")]
    assert find_conflicts("pcsg", "mn-disagg-0-decode", disaggregated, hpas) == [
        "Grove HPA llm/mn-disagg-0-decode scales podcliquescalinggroup mn-disagg-0-decode"
    ]


def test_other_hpa_reported(disaggregated):
    hpas = [hpa("frontend-cpu", "PodClique", "mn-disagg-0-frontend")]
    assert find_conflicts("podclique", "mn-disagg-0-frontend", disaggregated, hpas) == [
        "HPA llm/frontend-cpu scales podclique mn-disagg-0-frontend"
    ]


def test_keda_hpa_reported(disaggregated):
    hpas = [hpa("keda-hpa-frontend", "PodClique", "mn-disagg-0-frontend", labels={"app.kubernetes.io/managed-by": "keda-operator"})]
    assert find_conflicts("podclique", "mn-disagg-0-frontend", disaggregated, hpas) == [
        "KEDA HPA llm/keda-hpa-frontend scales podclique mn-disagg-0-frontend"
    ]


def test_hpa_without_api_version_matches(disaggregated):
    hpas = [hpa("bare", "PodCliqueSet", "mn-disagg", api_version=None)]
    assert find_conflicts("podcliqueset", "mn-disagg", disaggregated, hpas) == ["HPA llm/bare scales podcliqueset mn-disagg"]


# Each case: name, HPA that must not count as a conflict for podclique mn-disagg-0-frontend.
UNRELATED_HPAS = [
    ("other name", hpa("x", "PodClique", "mn-disagg-1-frontend")),
    ("other kind", hpa("x", "Deployment", "mn-disagg-0-frontend", api_version="apps/v1")),
    ("other group same kind", hpa("x", "PodClique", "mn-disagg-0-frontend", api_version="example.com/v1")),
    ("other namespace", hpa("x", "PodClique", "mn-disagg-0-frontend", namespace="other")),
    ("group not clique", grove_hpa("PodCliqueScalingGroup", "mn-disagg-0-frontend")),
]


@pytest.mark.parametrize("unrelated", [case[1] for case in UNRELATED_HPAS], ids=[case[0] for case in UNRELATED_HPAS])
def test_unrelated_hpa_ignored(disaggregated, unrelated):
    assert find_conflicts("podclique", "mn-disagg-0-frontend", disaggregated, [unrelated]) == []


def test_namespace_argument_wins(disaggregated):
    hpas = [hpa("x", "PodClique", "mn-disagg-0-frontend", namespace="other")]
    assert find_conflicts("podclique", "mn-disagg-0-frontend", disaggregated, hpas, namespace="other") == [
        "HPA other/x scales podclique mn-disagg-0-frontend"
    ]


def test_template_and_hpa_both_reported(simple1):
    hpas = [grove_hpa("PodClique", "simple1-0-pca")]
    assert find_conflicts("PodClique", "simple1-0-pca", simple1, hpas) == [
        "PodCliqueSet simple1 template clique pca has autoScalingConfig, so Grove runs an HPA on podclique simple1-0-pca",
        "Grove HPA llm/simple1-0-pca scales podclique simple1-0-pca",
    ]


# --- Names ------------------------------------------------------------------------------------

NAME_CASES = [
    ("standalone clique", "podclique", "mn-disagg-3-frontend", TemplateMatch(Kind.PODCLIQUE, "frontend", 3)),
    ("group member", "podclique", "mn-disagg-0-prefill-2-pworker", TemplateMatch(Kind.PODCLIQUE, "pworker", 0, "prefill", 2)),
    ("scaling group", "pcsg", "mn-disagg-1-decode", TemplateMatch(Kind.PODCLIQUESCALINGGROUP, "decode", 1)),
    ("podcliqueset", "pcs", "mn-disagg", TemplateMatch(Kind.PODCLIQUESET, "mn-disagg")),
]


@pytest.mark.parametrize(("kind", "name", "expected"), [case[1:] for case in NAME_CASES], ids=[case[0] for case in NAME_CASES])
def test_match_template(disaggregated, kind, name, expected):
    assert match_template(kind, name, disaggregated) == [expected]


def test_group_member_not_standalone(disaggregated):
    # pworker belongs to a group, so <pcs>-<i>-pworker is no Grove name.
    with pytest.raises(CoexistenceError, match=r"PodClique 'mn-disagg-0-pworker' is not a child of PodCliqueSet 'mn-disagg'"):
        match_template("podclique", "mn-disagg-0-pworker", disaggregated)


def test_foreign_target_rejected(disaggregated):
    with pytest.raises(CoexistenceError, match=r"PodCliqueScalingGroup 'other-0-decode' is not a child"):
        find_conflicts("pcsg", "other-0-decode", disaggregated, [])


def test_invalid_kind_rejected(disaggregated):
    with pytest.raises(CoexistenceError, match=r"invalid target kind 'Deployment'"):
        find_conflicts("Deployment", "x", disaggregated, [])


def test_parse_kind_aliases():
    assert parse_kind("PodCliqueScalingGroup") is Kind.PODCLIQUESCALINGGROUP
    assert parse_kind("pclq") is Kind.PODCLIQUE
    assert parse_kind(Kind.PODCLIQUESET) is Kind.PODCLIQUESET


# --- managedFields ----------------------------------------------------------------------------


def managed(manager, operation, *, replicas=True, subresource=None, time="2026-12-04T20:00:00Z") -> dict:
    spec = {"f:replicas": {}} if replicas else {"f:template": {}}
    entry = {
        "manager": manager,
        "operation": operation,
        "apiVersion": "grove.io/v1alpha1",
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": spec},
    }
    if subresource:
        entry["subresource"] = subresource
    return entry


@pytest.fixture
def podclique() -> dict:
    return {
        "apiVersion": "grove.io/v1alpha1",
        "kind": "PodClique",
        "metadata": {
            "name": "mn-disagg-0-frontend",
            "namespace": "llm",
            "managedFields": [
                managed("grove-operator", "Update", replicas=False, time="2026-12-04T19:00:00Z"),
                managed("grove-autoscaler", "Update", subresource="scale", time="2026-12-04T19:30:00Z"),
                managed("kubectl", "Update", subresource="scale", time="2026-12-04T20:00:00Z"),
                {"manager": "grove-operator", "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {"f:replicas": {}}}},
            ],
        },
        "spec": {"replicas": 3},
    }


def test_other_writers_lists_kubectl(podclique):
    assert other_writers(podclique) == ["kubectl (Update via /scale at 2026-12-04T20:00:00Z)"]


def test_other_writers_custom_manager(podclique):
    assert other_writers(podclique, our_manager="kubectl") == ["grove-autoscaler (Update via /scale at 2026-12-04T19:30:00Z)"]


def test_other_writers_ignore(podclique):
    podclique["metadata"]["managedFields"][0] = managed("grove-operator", "Update", time="2026-12-04T19:00:00Z")
    assert other_writers(podclique, ignore=["grove-operator"]) == ["kubectl (Update via /scale at 2026-12-04T20:00:00Z)"]
    assert other_writers(podclique) == [
        "grove-operator (Update at 2026-12-04T19:00:00Z)",
        "kubectl (Update via /scale at 2026-12-04T20:00:00Z)",
    ]


def test_status_replicas_not_a_writer(podclique):
    managers = [writer.manager for writer in replica_writers(podclique)]
    assert managers == ["grove-autoscaler", "kubectl"]


def test_no_managed_fields():
    assert other_writers({"metadata": {"name": "x"}}) == []


# --- Against the emulated API server --------------------------------------------------------


def test_conflicts_from_live_api(kube_emulator, shared_dir):
    # Grove's controller in the emulator creates the HPAs, and the official client lists them.
    kube_emulator.apply_manifest(shared_dir / "grove" / "simple1.yaml")
    kube = KubeClient(kube_emulator.api_client())
    pcs = kube.list_objects(Kind.PODCLIQUESET, "default")[0]
    hpas = kube.list_hpas("default")
    assert sorted(item["metadata"]["name"] for item in hpas) == ["simple1-0-pca", "simple1-0-sga"]

    assert find_conflicts("podclique", "simple1-0-pca", pcs, hpas) == [
        "PodCliqueSet simple1 template clique pca has autoScalingConfig, so Grove runs an HPA on podclique simple1-0-pca",
        "Grove HPA default/simple1-0-pca scales podclique simple1-0-pca",
    ]
    assert find_conflicts("pcsg", "simple1-0-sga", pcs, hpas)[1] == "Grove HPA default/simple1-0-sga scales podcliquescalinggroup simple1-0-sga"
    assert find_conflicts("podclique", "simple1-0-pcd", pcs, hpas) == []

    client.AutoscalingV2Api(kube.api_client).create_namespaced_horizontal_pod_autoscaler(
        "default",
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "pcd-by-hand"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "grove.io/v1alpha1", "kind": "PodClique", "name": "simple1-0-pcd"},
                "minReplicas": 2,
                "maxReplicas": 4,
            },
        },
    )
    assert find_conflicts("podclique", "simple1-0-pcd", pcs, kube.list_hpas("default")) == [
        "HPA default/pcd-by-hand scales podclique simple1-0-pcd"
    ]
