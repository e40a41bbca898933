"""The example plugin distribution, installed with pip and run through the registry and the engine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from autoscaler.engine import EngineState, TargetSpec, decide
from metrics.sample import Sample
from policies.registry import load_registry

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "grove-autoscaler-example-policy"
TARGET = "llm/pclq/pcs-0-decode"
STEPS = [{"above": 1, "replicas": 1}, {"above": 20, "replicas": 3}, {"above": 50, "replicas": 6}]


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    """Install the example with pip into a folder of its own, as a deployment would install it."""
    source = tmp_path_factory.mktemp("source") / "plugin"
    # Build from a copy so pip's build folders never land in the repository.
    shutil.copytree(EXAMPLE, source)
    target = tmp_path_factory.mktemp("site")
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, f"pip install failed:\n{completed.stdout}\n{completed.stderr}"
    return target


@pytest.fixture
def registry(installed_plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_plugin))
    yield load_registry()
    for name in [module for module in sys.modules if module.startswith("grove_autoscaler_example_policy")]:
        monkeypatch.delitem(sys.modules, name)


def test_entry_point_declared(installed_plugin):
    entry_points = next(installed_plugin.glob("grove_autoscaler_example_policy-*.dist-info")) / "entry_points.txt"

    text = entry_points.read_text()

    assert "[grove_autoscaler.policies]" in text
    assert "example-step = grove_autoscaler_example_policy.step:StepPolicy" in text


def test_registry_loads_plugin(registry):
    assert "example-step" in registry.names()
    assert registry.get("example-step").__module__ == "grove_autoscaler_example_policy.step"


def test_plugin_params_validated(registry):
    with pytest.raises(ValidationError, match="steps"):
        registry.create("example-step", {"signal": "request_rate"})
    with pytest.raises(ValidationError, match="increasing"):
        registry.create("example-step", {"steps": [{"above": 5, "replicas": 1}, {"above": 1, "replicas": 2}]})


def spec(registry, *, min_replicas=1, max_replicas=5, floor=0) -> TargetSpec:
    policy = registry.create("example-step", {"signal": "request_rate", "steps": STEPS})
    return TargetSpec(target=TARGET, rule="decode", policies=(policy,), min_replicas=min_replicas, max_replicas=max_replicas, floor=floor)


@pytest.mark.parametrize(
    "case, rate, current, expected",
    [
        ("first step", 5.0, 1, 1),
        ("middle step", 35.0, 1, 3),
        ("top step capped at max", 80.0, 3, 5),
        ("below every step raised to min", 0.5, 2, 1),
        ("failed read holds", Sample.unknown("query timed out"), 3, 3),
    ],
)
def test_plugin_through_engine(registry, case, rate, current, expected):
    sample = rate if isinstance(rate, Sample) else Sample.of(rate)

    decisions, state = decide(
        now=1000.0,
        specs=[spec(registry)],
        observations={TARGET: {"request_rate": sample}},
        live={TARGET: current},
        state=EngineState(),
    )

    assert decisions[0].desired == expected, (case, decisions[0].reason)
    assert TARGET in state.targets


def test_plugin_gang_floor_applied(registry):
    decisions, _ = decide(
        now=1000.0,
        specs=[spec(registry, floor=2)],
        observations={TARGET: {"request_rate": Sample.of(5.0)}},
        live={TARGET: 2},
        state=EngineState(),
    )

    assert decisions[0].desired == 2
