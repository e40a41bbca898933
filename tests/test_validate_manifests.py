"""`validate --manifest`: rules checked against PodCliqueSet manifests without a cluster."""

import pytest
import yaml

from autoscaler.cli import main
from autoscaler.config import parse_config
from autoscaler.manifests import check_manifests, load_podcliquesets


def rule(**overrides):
    base = {
        "name": "r",
        "podCliqueSets": {"namespace": "default", "names": ["multinode-disaggregated"]},
        "level": "scalingGroup",
        "scalingGroup": "prefill",
        "maxReplicas": 4,
        "policies": [{"name": "kv-cache"}],
    }
    base.update(overrides)
    return parse_config({"targets": [base]})


@pytest.fixture
def sample(shared_dir):
    return load_podcliquesets([shared_dir / "grove" / "multi-node-disaggregated.yaml"])


def test_existing_group_is_clean(sample):
    report = check_manifests(rule(), sample)
    assert report.errors == []
    assert report.warnings == []


def test_missing_group_is_an_error(sample):
    report = check_manifests(rule(scalingGroup="prefil"), sample)
    assert report.errors == ["targets[0].scalingGroup: PodCliqueSet multinode-disaggregated has no scaling group 'prefil'; it has ['decode', 'prefill']"]


def test_clique_inside_group_refused_unless_allowed(sample):
    refused = check_manifests(rule(level="clique", scalingGroup=None, clique={"name": "pworker"}), sample)
    assert len(refused.errors) == 1
    assert "member of scaling group 'prefill'" in refused.errors[0]
    allowed = check_manifests(rule(level="clique", scalingGroup=None, clique={"name": "pworker"}, allowCliqueInScalingGroup=True), sample)
    assert allowed.errors == []


def test_grove_autoscaling_warns(shared_dir):
    simple = load_podcliquesets([shared_dir / "grove" / "simple1.yaml"])
    config = rule(podCliqueSets={"namespace": "default", "selector": {"matchLabels": {"app": "simple1"}}}, scalingGroup="sga")
    report = check_manifests(config, simple)
    assert report.errors == []
    assert any("has scaleConfig" in warning for warning in report.warnings)


def test_selector_mismatch_warns(sample):
    report = check_manifests(rule(podCliqueSets={"namespace": "llm"}), sample)
    assert report.warnings == ["targets[0]: rule 'r' selects none of the given PodCliqueSets"]


def test_validate_command_with_manifest(shared_dir, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"targets": [{
        "name": "workers", "podCliqueSets": {"namespace": "default"}, "level": "clique", "clique": {"roleName": "pworker"},
        "maxReplicas": 8, "policies": [{"name": "kv-cache"}],
    }]}))
    manifest = str(shared_dir / "grove" / "multi-node-disaggregated.yaml")
    assert main(["validate", str(config), "--manifest", manifest]) == 2
    assert "member of scaling group 'prefill'" in capsys.readouterr().err
    assert main(["validate", str(config), "--manifest", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("config_name", "manifest"),
    [
        ("multi-node-disaggregated.yaml", "multi-node-disaggregated.yaml"),
        ("multinode-disaggregated-with-frontend.yaml", "multinode-disaggregated-with-frontend.yaml"),
        ("single-node-disaggregated.yaml", "single-node-disaggregated.yaml"),
        ("simple1.yaml", "simple1.yaml"),
        ("simple3-explicit-startup-order.yaml", "simple3-explicit-startup-order.yaml"),
    ],
)
def test_example_configs_match_their_samples(shared_dir, config_name, manifest):
    from pathlib import Path

    examples = Path(__file__).resolve().parent.parent / "examples" / "configs"
    config = parse_config(yaml.safe_load((examples / config_name).read_text()))
    report = check_manifests(config, load_podcliquesets([shared_dir / "grove" / manifest]))
    assert report.errors == []


def test_file_without_podcliqueset_rejected(tmp_path):
    path = tmp_path / "crd.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(ValueError, match="crd.yaml: no document with kind: PodCliqueSet"):
        load_podcliquesets([path])


def test_floor_above_max_is_an_error(sample):
    report = check_manifests(rule(level="clique", scalingGroup=None, clique={"name": "pworker"}, allowCliqueInScalingGroup=True, maxReplicas=2), sample)
    assert report.errors == ["targets[0].maxReplicas: 2 is below minAvailable 4 of multinode-disaggregated/pworker; raise maxReplicas"]
