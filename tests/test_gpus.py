"""GPUs per replica from PodCliqueSet templates: the Grove samples, plus copies that request GPUs."""

from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.gpus import TemplateError, gpus_per_pod, gpus_per_replica


def load_sample(shared_dir, name: str) -> dict:
    documents = [doc for doc in yaml.safe_load_all((shared_dir / "grove" / name).read_text()) if doc]
    assert len(documents) == 1
    return documents[0]


def clique(pcs: dict, name: str) -> dict:
    return next(entry for entry in pcs["spec"]["template"]["cliques"] if entry["name"] == name)


def request_gpus(pcs: dict, clique_name: str, gpus, *, resource: str = "nvidia.com/gpu", field: str = "requests") -> None:
    container = clique(pcs, clique_name)["spec"]["podSpec"]["containers"][0]
    container.setdefault("resources", {}).setdefault(field, {})[resource] = gpus


@pytest.fixture
def multinode(shared_dir) -> dict:
    """The multi-node sample with GPUs: leaders 1 GPU, prefill workers 8, decode workers 4."""
    pcs = copy.deepcopy(load_sample(shared_dir, "multinode-disaggregated-with-frontend.yaml"))
    request_gpus(pcs, "pleader", "1")
    request_gpus(pcs, "pworker", 8)
    request_gpus(pcs, "dleader", "1")
    request_gpus(pcs, "dworker", "4")
    return pcs


# --- The samples as shipped request no GPUs -------------------------------------------------

SAMPLE_TARGETS = [
    ("simple1.yaml", "podcliqueset", None),
    ("simple1.yaml", "clique", "pca"),
    ("simple1.yaml", "scalingGroup", "sga"),
    ("single-node-disaggregated.yaml", "clique", "prefill"),
    ("multi-node-disaggregated.yaml", "scalingGroup", "prefill"),
    ("multinode-disaggregated-with-frontend.yaml", "podcliqueset", None),
]


@pytest.mark.parametrize(("sample", "level", "name"), SAMPLE_TARGETS)
def test_samples_request_no_gpus(shared_dir, sample, level, name):
    pcs = load_sample(shared_dir, sample)
    assert gpus_per_replica(pcs, level, name) == 0.0


# --- Levels ---------------------------------------------------------------------------------


def test_clique_replica_is_one_pod(multinode):
    # pworker has 3 pods in the template, but a clique's /scale counts pods.
    assert gpus_per_replica(multinode, "clique", "pworker") == 8.0
    assert gpus_per_replica(multinode, "clique", "frontend") == 0.0


def test_scaling_group_replica_sums_members(multinode):
    # prefill = pleader 1 pod x 1 GPU + pworker 3 pods x 8 GPUs
    assert gpus_per_replica(multinode, "scalingGroup", "prefill") == 25.0
    # decode = dleader 1 x 1 + dworker 2 x 4
    assert gpus_per_replica(multinode, "scalingGroup", "decode") == 9.0


def test_pcs_replica_sums_template(multinode):
    # frontend 0 + prefill 2 group replicas x 25 + decode 1 x 9
    assert gpus_per_replica(multinode, "podcliqueset") == 59.0


def test_pcs_replica_counts_standalone_clique_pods(shared_dir):
    pcs = copy.deepcopy(load_sample(shared_dir, "single-node-disaggregated.yaml"))
    request_gpus(pcs, "prefill", "2")
    request_gpus(pcs, "decode", "1")
    # prefill 3 pods x 2 + decode 2 pods x 1
    assert gpus_per_replica(pcs, "podcliqueset") == 8.0


def test_group_default_replicas_is_one(shared_dir):
    pcs = copy.deepcopy(load_sample(shared_dir, "simple1.yaml"))
    for name in ("pca", "pcb", "pcc", "pcd"):
        request_gpus(pcs, name, 1)
    # sga has no replicas field: 1 group replica of pcb 2 pods + pcc 2 pods; pca 3 and pcd 2 are standalone.
    assert gpus_per_replica(pcs, "scalingGroup", "sga") == 4.0
    assert gpus_per_replica(pcs, "podcliqueset") == 9.0


def test_group_template_replicas_multiply(shared_dir):
    pcs = copy.deepcopy(load_sample(shared_dir, "simple3-explicit-startup-order.yaml"))
    for name in ("pca", "pcb", "pcc", "pcd", "pce"):
        request_gpus(pcs, name, 1)
    # sga has replicas 3 and members pcb, pcc, pcd with 2 pods each.
    assert gpus_per_replica(pcs, "scalingGroup", "sga") == 6.0
    # pca 3 + pce 2 standalone, plus 3 group replicas x 6
    assert gpus_per_replica(pcs, "podcliqueset") == 23.0


# --- Per pod: resources, limits, init containers ----------------------------------------------

POD_CASES = [
    ("no resources", {"containers": [{"name": "a"}]}, 0.0),
    ("one request", {"containers": [{"name": "a", "resources": {"requests": {"nvidia.com/gpu": "2"}}}]}, 2.0),
    ("limit only", {"containers": [{"name": "a", "resources": {"limits": {"nvidia.com/gpu": 4}}}]}, 4.0),
    (
        "request wins over limit",
        {"containers": [{"name": "a", "resources": {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 3}}}]},
        1.0,
    ),
    (
        "containers sum",
        {
            "containers": [
                {"name": "a", "resources": {"limits": {"nvidia.com/gpu": 2}}},
                {"name": "b", "resources": {"requests": {"nvidia.com/gpu": "1"}}},
            ]
        },
        3.0,
    ),
    ("amd counted", {"containers": [{"name": "a", "resources": {"requests": {"amd.com/gpu": 8}}}]}, 8.0),
    (
        "both vendors add",
        {"containers": [{"name": "a", "resources": {"requests": {"amd.com/gpu": 1, "nvidia.com/gpu": 1}}}]},
        2.0,
    ),
    ("cpu ignored", {"containers": [{"name": "a", "resources": {"requests": {"cpu": "8", "memory": "1Gi"}}}]}, 0.0),
    (
        "init container larger",
        {
            "initContainers": [{"name": "warm", "resources": {"requests": {"nvidia.com/gpu": 4}}}],
            "containers": [{"name": "a", "resources": {"requests": {"nvidia.com/gpu": 1}}}],
        },
        4.0,
    ),
    (
        "init containers max not sum",
        {
            "initContainers": [
                {"name": "one", "resources": {"requests": {"nvidia.com/gpu": 2}}},
                {"name": "two", "resources": {"requests": {"nvidia.com/gpu": 3}}},
            ],
            "containers": [{"name": "a", "resources": {"requests": {"nvidia.com/gpu": 1}}}],
        },
        3.0,
    ),
    (
        "sidecar adds to containers",
        {
            "initContainers": [{"name": "side", "restartPolicy": "Always", "resources": {"requests": {"nvidia.com/gpu": 1}}}],
            "containers": [{"name": "a", "resources": {"requests": {"nvidia.com/gpu": 2}}}],
        },
        3.0,
    ),
    (
        "init after sidecar adds it",
        {
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"nvidia.com/gpu": 1}}},
                {"name": "warm", "resources": {"requests": {"nvidia.com/gpu": 4}}},
            ],
            "containers": [{"name": "a", "resources": {"requests": {"nvidia.com/gpu": 2}}}],
        },
        5.0,
    ),
    (
        "init before sidecar excludes it",
        {
            "initContainers": [
                {"name": "warm", "resources": {"requests": {"nvidia.com/gpu": 4}}},
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"nvidia.com/gpu": 1}}},
            ],
            "containers": [{"name": "a", "resources": {"requests": {"nvidia.com/gpu": 2}}}],
        },
        4.0,
    ),
]


@pytest.mark.parametrize(("pod_spec", "expected"), [case[1:] for case in POD_CASES], ids=[case[0] for case in POD_CASES])
def test_gpus_per_pod(pod_spec, expected):
    assert gpus_per_pod(pod_spec) == expected


def test_resource_names_configurable():
    pod_spec = {"containers": [{"name": "a", "resources": {"requests": {"nvidia.com/gpu": 2, "gpu.intel.com/i915": 1}}}]}
    assert gpus_per_pod(pod_spec, resource_names=["gpu.intel.com/i915"]) == 1.0
    assert gpus_per_pod(pod_spec, resource_names=[]) == 0.0


def test_resource_names_reach_replica(multinode):
    request_gpus(multinode, "pworker", "2", resource="example.com/accel")
    assert gpus_per_replica(multinode, "clique", "pworker", resource_names=["example.com/accel"]) == 2.0


@given(
    app=st.lists(st.integers(0, 8), max_size=4),
    init=st.lists(st.tuples(st.integers(0, 8), st.booleans()), max_size=4),
)
def test_pod_gpus_matches_phase_rule(app, init):
    pod_spec = {
        "containers": [{"name": f"c{i}", "resources": {"requests": {"nvidia.com/gpu": gpus}}} for i, gpus in enumerate(app)],
        "initContainers": [
            {"name": f"i{i}", "resources": {"limits": {"nvidia.com/gpu": gpus}}, **({"restartPolicy": "Always"} if sidecar else {})}
            for i, (gpus, sidecar) in enumerate(init)
        ],
    }
    result = gpus_per_pod(pod_spec)

    sidecar_total = sum(gpus for gpus, sidecar in init if sidecar)
    assert result >= sum(app) + sidecar_total
    for index, (gpus, sidecar) in enumerate(init):
        before = sum(g for g, s in init[:index] if s)
        assert result >= gpus + before
    assert result <= sum(app) + sum(gpus for gpus, _ in init)


# --- Invalid input ----------------------------------------------------------------------------


def test_unknown_clique_names_known(multinode):
    with pytest.raises(TemplateError, match=r"clique 'nope' not found.*'dleader'"):
        gpus_per_replica(multinode, "clique", "nope")


def test_unknown_group_names_known(multinode):
    with pytest.raises(TemplateError, match=r"scaling group 'nope' not found.*'decode', 'prefill'"):
        gpus_per_replica(multinode, "scalingGroup", "nope")


def test_invalid_level_rejected(multinode):
    with pytest.raises(TemplateError, match=r"invalid level 'pod'"):
        gpus_per_replica(multinode, "pod", "pworker")


def test_missing_name_rejected(multinode):
    with pytest.raises(TemplateError, match=r"level clique needs"):
        gpus_per_replica(multinode, "clique")


def test_invalid_quantity_names_field(multinode):
    request_gpus(multinode, "pworker", "eight")
    with pytest.raises(TemplateError, match=r"spec\.template\.cliques\[2\]\.spec\.podSpec\.containers\[0\]\.resources\.requests\['nvidia\.com/gpu'\]: invalid quantity 'eight'"):
        gpus_per_replica(multinode, "scalingGroup", "prefill")


def test_negative_quantity_rejected():
    with pytest.raises(TemplateError, match=r"must not be negative, got '-1'"):
        gpus_per_pod({"containers": [{"name": "a", "resources": {"limits": {"nvidia.com/gpu": "-1"}}}]})


def test_missing_clique_replicas_rejected(multinode):
    del clique(multinode, "dworker")["spec"]["replicas"]
    with pytest.raises(TemplateError, match=r"cliques\[4\]\.spec\.replicas: expected an integer >= 1, got None"):
        gpus_per_replica(multinode, "podcliqueset")


def test_group_member_missing_rejected(multinode):
    multinode["spec"]["template"]["podCliqueScalingGroups"][1]["cliqueNames"].append("ghost")
    with pytest.raises(TemplateError, match=r"podCliqueScalingGroups\[1\]\.cliqueNames: clique 'ghost'"):
        gpus_per_replica(multinode, "scalingGroup", "decode")


def test_missing_template_rejected():
    with pytest.raises(TemplateError, match=r"PodCliqueSet 'x': spec\.template is missing"):
        gpus_per_replica({"metadata": {"name": "x"}, "spec": {}}, "podcliqueset")
