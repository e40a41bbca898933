"""Simulated Grove topology: targets, roles and GPUs per replica from a PodCliqueSet manifest."""

from __future__ import annotations

import copy

import pytest
import yaml

from autoscaler.backtest.cluster import ReplicaPool, TopologyError, build_topology, default_manifest, load_manifest
from autoscaler.backtest.signals import DECODE, PREFILL
from autoscaler.config import parse_config
from autoscaler.specs import build_specs
from autoscaler.targets import Kind


def _rule(name, level, *, group=None, clique=None, namespace="default", pcs="multinode-disaggregated", policy=None):
    rule = {
        "name": name,
        "podCliqueSets": {"namespace": namespace, "names": [pcs]},
        "level": level,
        "maxReplicas": 8,
        "policies": [policy or {"name": "kv-cache", "params": {"target_utilisation": 0.8}}],
    }
    if group:
        rule["scalingGroup"] = group
    if clique:
        rule["clique"] = {"name": clique}
    return rule


def _config(*rules):
    return parse_config({"targets": list(rules)})


GROUPS = _config(_rule("p", "scalingGroup", group="prefill"), _rule("d", "scalingGroup", group="decode"))


def test_default_manifest_groups():
    topology = build_topology(GROUPS, default_manifest())
    prefill = topology.by_role(PREFILL)
    decode = topology.by_role(DECODE)
    assert prefill.name == "default/podcliquescalinggroup/multinode-disaggregated-0-prefill"
    assert decode.name == "default/podcliquescalinggroup/multinode-disaggregated-0-decode"
    assert prefill.gpus_per_replica == 5
    assert decode.gpus_per_replica == 3
    assert prefill.template_replicas == 2
    assert decode.template_replicas == 1
    assert prefill.discovered.ref.kind is Kind.PODCLIQUESCALINGGROUP
    assert prefill.discovered.floor == 1


def test_gpus_per_pod_option():
    topology = build_topology(GROUPS, default_manifest(), gpus_per_pod=8)
    assert topology.by_role(PREFILL).gpus_per_replica == 40
    assert topology.by_role(DECODE).gpus_per_replica == 24


def test_gpu_requests_take_precedence():
    manifest = copy.deepcopy(default_manifest())
    for clique in manifest["spec"]["template"]["cliques"]:
        clique["spec"]["podSpec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = 2
    topology = build_topology(GROUPS, manifest, gpus_per_pod=8)
    assert topology.by_role(PREFILL).gpus_per_replica == 10
    assert topology.by_role(DECODE).gpus_per_replica == 6


def test_specs_built_from_simulated_targets():
    topology = build_topology(GROUPS, default_manifest())
    specs = build_specs(GROUPS, [target.discovered for target in topology.targets])
    assert [spec.target for spec in specs] == [target.name for target in topology.targets]
    assert specs[0].gpus_per_replica == 5
    assert specs[0].signals() == ["kv_cache_usage"]


def test_standalone_cliques(shared_dir):
    manifest = load_manifest(shared_dir / "grove" / "single-node-disaggregated.yaml")
    pcs = manifest["metadata"]["name"]
    namespace = manifest["metadata"].get("namespace", "default")
    config = _config(
        _rule("p", "clique", clique="prefill", pcs=pcs, namespace=namespace),
        _rule("d", "clique", clique="decode", pcs=pcs, namespace=namespace),
    )
    topology = build_topology(config, manifest)
    prefill = topology.by_role(PREFILL)
    assert prefill.discovered.ref.kind is Kind.PODCLIQUE
    assert prefill.name.endswith(f"{pcs}-0-prefill")
    assert prefill.template_replicas == 3


def test_rule_for_other_namespace_selects_nothing():
    config = _config(_rule("p", "scalingGroup", group="prefill"), _rule("d", "scalingGroup", group="decode", namespace="other"))
    with pytest.raises(TopologyError, match="exactly one prefill and one decode"):
        build_topology(config, default_manifest())


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (_rule("x", "podcliqueset"), "level podcliqueset is not supported"),
        (_rule("x", "scalingGroup", group="missing"), "scalingGroup 'missing' not found"),
        (_rule("x", "clique", clique="pleader"), "belongs to scaling group 'prefill'"),
    ],
)
def test_unsupported_rules(rule, message):
    config = _config(rule, _rule("d", "scalingGroup", group="decode"))
    with pytest.raises(TopologyError, match=message):
        build_topology(config, default_manifest())


def test_role_must_be_recognisable():
    manifest = copy.deepcopy(default_manifest())
    manifest["spec"]["template"]["podCliqueScalingGroups"][0]["name"] = "workers"
    manifest["spec"]["template"]["cliques"][0]["name"] = "leader"
    manifest["spec"]["template"]["cliques"][0]["spec"]["roleName"] = "leader"
    manifest["spec"]["template"]["cliques"][1]["name"] = "worker"
    manifest["spec"]["template"]["cliques"][1]["spec"]["roleName"] = "worker"
    manifest["spec"]["template"]["podCliqueScalingGroups"][0]["cliqueNames"] = ["leader", "worker"]
    config = _config(_rule("p", "scalingGroup", group="workers"), _rule("d", "scalingGroup", group="decode"))
    with pytest.raises(TopologyError, match="cannot tell whether"):
        build_topology(config, manifest)


def test_manifest_without_podcliqueset(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump({"kind": "ConfigMap"}))
    with pytest.raises(TopologyError, match="no document with kind: PodCliqueSet"):
        load_manifest(path)


def test_pool_scale_up_and_down():
    pool = ReplicaPool(PREFILL, 2.0, cold_start_s=100)
    pool.start_warm(2)
    added, removed = pool.scale_to(4, now=10)
    assert [replica.ready_at for replica in added] == [110, 110]
    assert pool.live_count == 4
    assert len(pool.ready(50)) == 2
    assert len(pool.ready(110)) == 4
    added, removed = pool.scale_to(1, now=50)
    assert [replica.id for replica in removed] == [3, 2, 1]
    assert removed[0].gone_at == 50
    assert removed[2].gone_at is None
    assert removed[2].draining
    assert pool.live_count == 1
    assert pool.gpu_seconds(0, 100) == pytest.approx(2 * (100 + 100 + 40 + 40))
