"""Configuration validation: every problem is reported with its field path and value."""

from pathlib import Path

import pytest
import yaml

from autoscaler.cli import main
from autoscaler.config import ConfigError, load_config, parse_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "configs"


def minimal(**target_overrides):
    target = {
        "name": "decode",
        "podCliqueSets": {"namespace": "llm"},
        "level": "clique",
        "clique": {"name": "decode"},
        "maxReplicas": 8,
        "policies": [{"name": "kv-cache"}],
    }
    target.update(target_overrides)
    return {"targets": [target]}


def problems_of(data) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "test.yaml")
    return caught.value.problems


def test_minimal_config_is_valid():
    config = parse_config(minimal())
    assert config.targets[0].max_replicas == 8
    assert config.interval_seconds == 15.0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"maxReplicas": 0}, "targets[0].maxReplicas: Input should be greater than or equal to 1 (got 0)"),
        ({"minReplicas": -1}, "targets[0].minReplicas: Input should be greater than or equal to 0 (got -1)"),
        ({"minReplicas": 9}, "targets[0]: minReplicas 9 is greater than maxReplicas 8"),
        ({"level": "node"}, "targets[0].level: Input should be 'podcliqueset', 'scalingGroup' or 'clique' (got 'node')"),
        ({"replicas": 3}, "targets[0].replicas: unknown field (got 3)"),
        ({"clique": {"name": "a", "roleName": "b"}}, "targets[0].clique: set exactly one of name or roleName"),
        ({"level": "scalingGroup", "clique": None}, "targets[0]: level scalingGroup needs scalingGroup"),
        ({"policies": []}, "targets[0].policies: List should have at least 1 item after validation"),
        ({"policies": [{"name": "no-such-policy"}]}, "targets[0].policies[0].name: unknown policy"),
        ({"behavior": {"scaleUp": {"policies": []}}}, "targets[0].behavior.scaleUp.policies: List should have at least 1 item"),
        ({"behavior": {"scaleDown": {"selectPolicy": "Fastest"}}}, "targets[0].behavior.scaleDown.selectPolicy: Input should be 'Max', 'Min' or 'Disabled'"),
        ({"seriesLabels": {"bad-label": "{name}"}}, "targets[0].seriesLabels.bad-label: invalid Prometheus label name"),
        ({"seriesLabels": {"pod": "{podname}"}}, "targets[0].seriesLabels.pod: unknown placeholder {podname}"),
    ],
)
def test_invalid_field_is_named(overrides, expected):
    found = problems_of(minimal(**overrides))
    assert any(problem.startswith(expected) for problem in found), found


def test_policy_params_errors_carry_path():
    found = problems_of(minimal(policies=[{"name": "kv-cache", "params": {"no_such_param": 1}}]))
    assert any(problem.startswith("targets[0].policies[0].params.no_such_param: unknown field") for problem in found), found


def test_several_problems_reported_together():
    data = minimal(maxReplicas=0)
    data["intervalSeconds"] = 0
    data["metrics"] = {"prometheus": {"url": "prometheus:9090"}}
    found = problems_of(data)
    assert any(problem.startswith("intervalSeconds:") for problem in found)
    assert any(problem.startswith("metrics.prometheus.url: must start with http:// or https://") for problem in found)
    assert any(problem.startswith("targets[0].maxReplicas:") for problem in found)


def test_duplicate_rule_names_rejected():
    data = minimal()
    data["targets"].append(dict(data["targets"][0]))
    assert any("'decode' is used twice" in problem for problem in problems_of(data))


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("targets: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


def test_validate_command_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(minimal()))
    assert main(["validate", str(good)]) == 0

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(minimal(maxReplicas="many", policies=[{"name": "nope"}])))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "targets[0].maxReplicas" in err
    assert "'many'" in err
    assert "targets[0].policies[0].name" in err


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda path: path.name)
def test_example_configs_are_valid(path):
    config = load_config(path)
    assert config.targets


def test_unknown_signal_rejected_at_load():
    found = problems_of(minimal(policies=[{"name": "latency-slo", "params": {"signal": "ttft_p90x", "slo_seconds": 1}}]))
    assert any(problem.startswith("targets[0].policies[0]") for problem in found), found


def test_signal_missing_from_preset_rejected():
    data = minimal(policies=[{"name": "target", "params": {"signal": "requests_running", "type": "AverageValue", "value": 4}}])
    data["metrics"] = {"preset": "dynamo"}
    found = problems_of(data)
    assert any("requests_running" in problem for problem in found), found


def test_ratio_band_must_name_rules():
    data = minimal()
    data["ratioBands"] = [{"name": "pd", "numerator": "prefill", "denominator": "decode", "minRatio": 0.5, "maxRatio": 2}]
    assert any("ratioBands[0].numerator: no target rule named 'prefill'" in problem for problem in problems_of(data))


def test_scale_to_zero_only_for_podcliqueset():
    found = problems_of(minimal(minReplicas=0))
    assert any("minReplicas 0 is allowed only at level podcliqueset" in problem for problem in found), found


def test_non_utf8_file_named(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe targets: []")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    assert caught.value.problems == ["not UTF-8 text: invalid byte at position 0"]


def test_yaml_error_gives_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("targets:\n  - name: a\n - name: b\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith("invalid YAML: line 3, column 2:")
    assert "<unicode string>" not in str(caught.value)


def test_duplicate_yaml_key_rejected(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("intervalSeconds: 15\nintervalSeconds: 30\ntargets: []\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == ["invalid YAML: line 2, column 1: key 'intervalSeconds' appears twice (first on line 1)"]


def test_boolean_for_number_rejected():
    found = problems_of(minimal(maxReplicas=True))
    assert found == ["targets[0]: maxReplicas: expected a number, got True"]


def test_huge_replica_count_rejected():
    found = problems_of(minimal(maxReplicas=10**23))
    assert any(problem.startswith("targets[0].maxReplicas: Input should be less than or equal to 100000") for problem in found), found


def test_every_bad_reference_reported():
    data = minimal()
    data["budgets"] = [{"name": "gpus", "maxGpus": 8, "rules": ["nope"]}]
    data["ratioBands"] = [{"name": "pd", "numerator": "decode", "denominator": "missing", "minRatio": 0.5, "maxRatio": 2}]
    found = problems_of(data)
    assert "ratioBands[0].denominator: no target rule named 'missing'" in found
    assert "budgets[0].rules: no target rule named 'nope'" in found


def test_signal_labels_for_unread_signal_rejected():
    found = problems_of(minimal(signalLabels={"itl_p90": {"dynamo_namespace": "{namespace}-{pcs}"}}))
    assert any(problem.startswith("targets[0].signalLabels.itl_p90: no policy of this rule reads signal 'itl_p90'") for problem in found), found
