"""The pure decision engine: policies, the behaviour layer and state, without any I/O."""

import dataclasses
import json
from typing import ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.config import Behavior
from autoscaler.coordination import RatioBand
from autoscaler.engine import EngineState, TargetSpec, decide, signal_requests
from metrics.sample import Sample
from policies.base import Desire, PolicyContext, PolicyParams, PolicyResult


class FixedParams(PolicyParams):
    signal: str = "load"


class Proportional:
    """Test policy: desired = ceil(sample), idle and unknown passed through."""

    name: ClassVar[str] = "proportional"
    Params: ClassVar[type[PolicyParams]] = FixedParams

    def __init__(self, params: FixedParams | None = None) -> None:
        self.params = params or FixedParams()

    def signals(self) -> list[str]:
        return [self.params.signal]

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        sample = context.samples[self.params.signal]
        if sample.is_unknown:
            return PolicyResult(Desire.unknown(sample.reason))
        if sample.is_idle:
            return PolicyResult(Desire.idle("idle"))
        count = context.state.get("count", 0) + 1
        return PolicyResult(Desire.scale_to(int(-(-sample.value // 1)), f"load {sample.value:g}"), {"count": count})


class Exploding(Proportional):
    name: ClassVar[str] = "exploding"

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        raise RuntimeError("boom")


IMMEDIATE = Behavior.model_validate({"scaleDown": {"stabilizationWindowSeconds": 0}})


def spec(target="ns/podclique/a", policies=None, floor=0, min_replicas=1, max_replicas=10, behavior=IMMEDIATE):
    return TargetSpec(
        target=target,
        rule="rule",
        policies=tuple(policies or [Proportional()]),
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        floor=floor,
        behavior=behavior,
        series_labels={"load": {"grove_io_podclique": target.rsplit("/", 1)[-1]}},
    )


def run_once(specs, observations, live, state=None, now=100.0, **cross_target):
    return decide(now=now, specs=specs, observations=observations, live=live, state=state or EngineState(), **cross_target)


def test_scales_to_policy_desire():
    decisions, _ = run_once([spec()], {"ns/podclique/a": {"load": Sample.of(5.2)}}, {"ns/podclique/a": 3})
    assert decisions[0].current == 3
    assert decisions[0].desired == 6
    assert decisions[0].changes_scale


def test_unreadable_scale_holds_without_desire():
    decisions, _ = run_once([spec()], {"ns/podclique/a": {"load": Sample.of(5)}}, {"ns/podclique/a": None})
    assert decisions[0].desired is None
    assert not decisions[0].changes_scale
    assert "could not be read" in decisions[0].reason


def test_missing_sample_is_unknown_and_blocks_scale_down():
    decisions, _ = run_once([spec()], {}, {"ns/podclique/a": 4})
    assert decisions[0].desired == 4
    assert decisions[0].desires[0][1].kind.value == "unknown"


def test_idle_goes_to_gang_floor():
    decisions, _ = run_once([spec(floor=2)], {"ns/podclique/a": {"load": Sample.idle()}}, {"ns/podclique/a": 6})
    assert decisions[0].desired == 2


def test_policy_exception_counts_as_unknown():
    specs = [spec(policies=[Exploding(), Proportional()])]
    decisions, _ = run_once(specs, {"ns/podclique/a": {"load": Sample.of(1)}}, {"ns/podclique/a": 5})
    assert decisions[0].desired == 5
    assert "boom" in decisions[0].desires[0][1].reason


def test_largest_policy_wins():
    two = [Proportional(FixedParams(signal="load")), Proportional(FixedParams(signal="other"))]
    observations = {"ns/podclique/a": {"load": Sample.of(3), "other": Sample.of(7)}}
    decisions, _ = run_once([spec(policies=two)], observations, {"ns/podclique/a": 3})
    assert decisions[0].desired == 7


def test_policy_state_is_carried_and_serialisable():
    observations = {"ns/podclique/a": {"load": Sample.of(3)}}
    _, state = run_once([spec()], observations, {"ns/podclique/a": 3})
    _, state = run_once([spec()], observations, {"ns/podclique/a": 3}, state=state, now=115.0)
    restored = EngineState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored.targets["ns/podclique/a"].policy_state["0:proportional"] == {"count": 2}


def test_removed_target_leaves_state():
    observations = {"ns/podclique/a": {"load": Sample.of(3)}, "ns/podclique/b": {"load": Sample.of(3)}}
    specs = [spec("ns/podclique/a"), spec("ns/podclique/b")]
    _, state = run_once(specs, observations, {"ns/podclique/a": 3, "ns/podclique/b": 3})
    _, state = run_once(specs[:1], observations, {"ns/podclique/a": 3}, state=state)
    assert set(state.targets) == {"ns/podclique/a"}


def test_signal_requests_carry_series_labels():
    requests = signal_requests([spec("ns/podclique/a"), spec("ns/podclique/b")])
    assert [(request.target, request.signal, dict(request.series_labels)) for request in requests] == [
        ("ns/podclique/a", "load", {"grove_io_podclique": "a"}),
        ("ns/podclique/b", "load", {"grove_io_podclique": "b"}),
    ]


samples = st.one_of(
    st.floats(min_value=0, max_value=1000, allow_nan=False).map(Sample.of),
    st.just(Sample.idle()),
    st.just(Sample.unknown("query failed")),
)


@settings(max_examples=200, deadline=None)
@given(
    sample=samples,
    current=st.integers(min_value=0, max_value=50),
    floor=st.integers(min_value=0, max_value=5),
    min_replicas=st.integers(min_value=0, max_value=5),
    max_replicas=st.integers(min_value=5, max_value=40),
)
def test_decision_within_bounds_and_never_down_on_unknown(sample, current, floor, min_replicas, max_replicas):
    target_spec = spec(floor=floor, min_replicas=min_replicas, max_replicas=max_replicas)
    decisions, _ = run_once([target_spec], {"ns/podclique/a": {"load": sample}}, {"ns/podclique/a": current})
    desired = decisions[0].desired
    assert desired <= max_replicas
    assert desired >= min(max(floor, min_replicas), max_replicas)
    if sample.is_unknown:
        assert desired >= min(current, max_replicas)


def budget_spec(target, *, gpus, priority=0, floor=1, max_replicas=10):
    return dataclasses.replace(
        spec(target, floor=floor, max_replicas=max_replicas), gpus_per_replica=gpus, priority=priority, budget_scopes=("gpus",)
    )


def test_budget_cuts_lowest_priority_first():
    specs = [budget_spec("ns/podclique/a", gpus=2, priority=1), budget_spec("ns/podclique/b", gpus=2, priority=0)]
    observations = {"ns/podclique/a": {"load": Sample.of(6)}, "ns/podclique/b": {"load": Sample.of(6)}}
    decisions, _ = run_once(specs, observations, {"ns/podclique/a": 2, "ns/podclique/b": 2}, budgets={"gpus": 16})
    desired = {decision.target: decision.desired for decision in decisions}
    assert desired == {"ns/podclique/a": 6, "ns/podclique/b": 2}
    assert decisions[1].adjustments[-1].step == "budget"


def test_budget_rebalance_shrinks_and_grows_in_one_tick():
    """A rebalance does not deadlock: b shrinks and a grows in the same tick."""
    specs = [budget_spec("ns/podclique/a", gpus=1), budget_spec("ns/podclique/b", gpus=1)]
    observations = {"ns/podclique/a": {"load": Sample.of(7)}, "ns/podclique/b": {"load": Sample.of(1)}}
    decisions, _ = run_once(specs, observations, {"ns/podclique/a": 2, "ns/podclique/b": 6}, budgets={"gpus": 8})
    # a may add at most 4 pods per 15 s (HPA default), so it lands on 6; b shrinks to 1 in the same tick.
    assert [decision.desired for decision in decisions] == [6, 1]


def test_budget_change_recorded_in_history():
    specs = [budget_spec("ns/podclique/a", gpus=4)]
    decisions, state = run_once(specs, {"ns/podclique/a": {"load": Sample.of(9)}}, {"ns/podclique/a": 1}, budgets={"gpus": 12})
    assert decisions[0].desired == 3
    assert state.targets["ns/podclique/a"].history.scale_events == [(100.0, 2)]


def test_podcliqueset_counts_only_its_growth():
    """Existing PodCliqueSet replicas are counted through their children; only growth is new."""
    pcs = budget_spec("ns/podcliqueset/sys", gpus=8, floor=0)
    child = budget_spec("ns/podcliquescalinggroup/sys-0-prefill", gpus=4)
    observations = {"ns/podcliqueset/sys": {"load": Sample.of(3)}, "ns/podcliquescalinggroup/sys-0-prefill": {"load": Sample.of(2)}}
    live = {"ns/podcliqueset/sys": 1, "ns/podcliquescalinggroup/sys-0-prefill": 2}
    decisions, _ = run_once([pcs, child], observations, live, budgets={"gpus": 16})
    desired = {decision.target: decision.desired for decision in decisions}
    # 8 GPUs of the child plus one more PodCliqueSet replica at 8 GPUs fill the budget of 16.
    assert desired == {"ns/podcliqueset/sys": 2, "ns/podcliquescalinggroup/sys-0-prefill": 2}


def test_ratio_band_raises_the_smaller_side():
    specs = [spec("ns/podclique/p"), spec("ns/podclique/d")]
    observations = {"ns/podclique/p": {"load": Sample.of(1)}, "ns/podclique/d": {"load": Sample.of(6)}}
    bands = [RatioBand("pd", "ns/podclique/p", "ns/podclique/d", 0.5, 2.0)]
    decisions, state = run_once(specs, observations, {"ns/podclique/p": 1, "ns/podclique/d": 6}, bands=bands)
    assert [decision.desired for decision in decisions] == [3, 6]
    assert decisions[0].adjustments[-1].step == "ratio"
    assert state.targets["ns/podclique/p"].history.scale_events == [(100.0, 2)]
