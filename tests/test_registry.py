"""The policy registry: built-ins, validation errors, and plugins from entry points."""

from __future__ import annotations

import logging
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from pydantic import ValidationError

from autoscaler.config import ConfigError, parse_config
from metrics.sample import Sample
from policies.base import DesireKind, PolicyContext, PolicyParams, PolicyResult
from policies.kv_cache import KvCachePolicy
from policies.latency_slo import LatencySloPolicy
from policies.registry import BUILTIN_POLICIES, PolicyError, PolicyRegistry, default_registry, load_registry
from policies.target import TargetPolicy

BUILTIN_NAMES = [
    "dynamo-compatible",
    "kv-cache",
    "kv-spare",
    "latency-slo",
    "queue",
    "sla-planner",
    "target",
    "throughput",
]


def test_builtins_present(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="policies.registry"):
        registry = load_registry(entry_points=[])

    assert [record.getMessage() for record in caplog.records] == []
    assert registry.names() == BUILTIN_NAMES
    assert sorted(BUILTIN_POLICIES) == BUILTIN_NAMES
    assert registry.get("target") is TargetPolicy
    assert registry.get("latency-slo") is LatencySloPolicy
    assert registry.get("kv-cache") is KvCachePolicy


def test_default_registry_is_cached() -> None:
    assert default_registry() is default_registry()
    assert "target" in default_registry()


def test_unknown_name_lists_known_names() -> None:
    registry = load_registry(entry_points=[])

    with pytest.raises(PolicyError) as error:
        registry.create("targett", {})

    assert str(error.value) == f"unknown policy 'targett'; known policies: {', '.join(BUILTIN_NAMES)}"


def test_create_validates_and_builds() -> None:
    policy = load_registry(entry_points=[]).create("latency-slo", {"signal": "ttft_p90", "slo_seconds": 0.5})

    assert isinstance(policy, LatencySloPolicy)
    assert policy.signals() == ["ttft_p90"]


def test_params_error_carries_field_names() -> None:
    registry = load_registry(entry_points=[])

    with pytest.raises(ValidationError) as error:
        registry.create("target", {"signal": "itl_p90", "type": "Value", "value": -1, "tolerence": 0.2})

    assert sorted(item["loc"] for item in error.value.errors()) == [("tolerence",), ("value",)]


def test_params_must_be_a_mapping() -> None:
    with pytest.raises(ValidationError):
        load_registry(entry_points=[]).create("kv-cache", ["target_utilisation", 0.8])


def test_config_reports_policy_field_paths() -> None:
    document = {
        "targets": [
            {
                "name": "decode",
                "podCliqueSets": {"namespace": "llm"},
                "level": "podcliqueset",
                "maxReplicas": 4,
                "policies": [
                    {"name": "target", "params": {"signal": "itl_p90", "type": "Value", "value": 0}},
                    {"name": "latency-sloo", "params": {}},
                ],
            }
        ]
    }

    with pytest.raises(ConfigError) as error:
        parse_config(document)

    assert error.value.problems == [
        "targets[0].policies[0].params.value: Input should be greater than 0 (got 0)",
        f"targets[0].policies[1].name: unknown policy 'latency-sloo'; known policies: {', '.join(BUILTIN_NAMES)} (got 'latency-sloo')",
    ]


class FixedParams(PolicyParams):
    replicas: int


class FixedPolicy:
    name = "fixed"
    Params = FixedParams

    def __init__(self, params: FixedParams) -> None:
        self.params = params

    def signals(self) -> list[str]:
        return []

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        raise NotImplementedError


class NoParams:
    name = "no-params"

    def signals(self) -> list[str]:
        return []

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        raise NotImplementedError


class LenientParams(PolicyParams):
    model_config = {"extra": "allow"}


class LenientPolicy(FixedPolicy):
    name = "lenient"
    Params = LenientParams


class BadSignals(FixedPolicy):
    name = "bad-signals"

    def signals(self):
        return "itl_p90"


class FailingInit(FixedPolicy):
    name = "failing-init"

    def __init__(self, params: FixedParams) -> None:
        raise RuntimeError("model file missing")


def test_register_and_create_custom_policy() -> None:
    registry = PolicyRegistry()
    registry.register(FixedPolicy)

    policy = registry.create("fixed", {"replicas": 3})

    assert isinstance(policy, FixedPolicy)
    assert policy.params.replicas == 3


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        (FixedPolicy(FixedParams(replicas=1)), "is a FixedPolicy, not a policy class"),
        (NoParams, "class attribute Params must be a subclass of policies.base.PolicyParams"),
        (LenientPolicy, "Params must reject unknown keys"),
        (type("Nameless", (FixedPolicy,), {"name": "Has Space"}), "class attribute name must be a lowercase policy name"),
        (type("NoEvaluate", (), {"name": "no-evaluate", "Params": FixedParams, "signals": lambda self: []}), "method evaluate() is missing"),
    ],
    ids=["instance", "no Params", "lenient Params", "bad name", "no evaluate"],
)
def test_register_rejects_non_policy(candidate: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PolicyRegistry().register(candidate)


def test_register_rejects_taken_name() -> None:
    registry = load_registry(entry_points=[])
    impostor = type("Impostor", (FixedPolicy,), {"name": "target"})

    with pytest.raises(PolicyError, match="policy name 'target' is already registered by policies.target.TargetPolicy"):
        registry.register(impostor)


def test_create_wraps_init_failure() -> None:
    registry = PolicyRegistry()
    registry.register(FailingInit)

    with pytest.raises(PolicyError, match="policy 'failing-init' failed to start: RuntimeError: model file missing"):
        registry.create("failing-init", {"replicas": 1})


def test_create_checks_signals_list() -> None:
    registry = PolicyRegistry()
    registry.register(BadSignals)

    with pytest.raises(PolicyError, match="signals\\(\\) must return a list of signal names"):
        registry.create("bad-signals", {"replicas": 1})


# --- Plugins through entry points ---------------------------------------------------------

PLUGIN_SOURCE = '''
from policies.base import Desire, PolicyParams, PolicyResult


class ConstantParams(PolicyParams):
    replicas: int


class ConstantPolicy:
    """Ask for a fixed count while the signal has a value."""

    name = "constant"
    Params = ConstantParams

    def __init__(self, params):
        self.params = params

    def signals(self):
        return ["request_rate"]

    def evaluate(self, context):
        return PolicyResult(Desire.scale_to(self.params.replicas, "constant"))


class NotAPolicy:
    name = "not-a-policy"


class TargetImpostor(ConstantPolicy):
    name = "target"
'''


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Put a distribution with policy entry points on sys.path; return its module name."""
    module = f"grove_policy_plugin_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(PLUGIN_SOURCE, encoding="utf-8")
    dist_info = tmp_path / f"{module}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n", encoding="utf-8")
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            f"""\
            [grove_autoscaler.policies]
            constant = {module}:ConstantPolicy
            missing-module = {module}_missing:Anything
            not-a-policy = {module}:NotAPolicy
            renamed = {module}:ConstantPolicy
            target = {module}:TargetImpostor
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module
    sys.modules.pop(module, None)


def test_plugin_loaded_from_entry_point(plugin_path: str) -> None:
    registry = load_registry()

    policy = registry.create("constant", {"replicas": 4})
    context = PolicyContext(now=0.0, target="t", current_replicas=1, samples={"request_rate": Sample.of(3.0)})
    desire = policy.evaluate(context).desire

    assert "constant" in registry.names()
    assert type(policy).__module__ == plugin_path
    assert desire.kind is DesireKind.REPLICAS
    assert desire.replicas == 4


def test_broken_plugins_skipped_and_logged(plugin_path: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="policies.registry"):
        registry = load_registry()
    messages = [record.getMessage() for record in caplog.records]

    assert registry.names() == sorted(BUILTIN_NAMES + ["constant"])
    assert any(
        message.startswith(f"skipped policy missing-module ({plugin_path}_missing:Anything): import failed: ModuleNotFoundError")
        for message in messages
    )
    assert any(
        message.startswith("skipped policy not-a-policy") and "class attribute Params must be a subclass" in message
        for message in messages
    )
    assert any(
        message.startswith("skipped policy renamed") and "but the class's name is 'constant'" in message
        for message in messages
    )
    assert any(
        message.startswith("skipped policy target") and "already registered by policies.target.TargetPolicy" in message
        for message in messages
    )
    assert len(messages) == 4
    assert registry.get("target") is TargetPolicy


def test_broken_builtin_skipped_and_logged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(BUILTIN_POLICIES, "vanished", "policies.vanished:VanishedPolicy")

    with caplog.at_level(logging.ERROR, logger="policies.registry"):
        registry = load_registry(entry_points=[])
    messages = [record.getMessage() for record in caplog.records]

    assert registry.names() == BUILTIN_NAMES
    assert messages == [
        "skipped policy vanished (policies.vanished:VanishedPolicy): import failed: "
        "ModuleNotFoundError: No module named 'policies.vanished'"
    ]
