"""The behaviour layer: HPA combination, stabilisation, rate limits and bounds, as table cases."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.behavior import (
    STEP_BOUNDS,
    STEP_RATE_LIMIT,
    STEP_STABILIZATION,
    STEP_UNKNOWN,
    Adjustment,
    ScaleHistory,
    apply_behavior,
    record_scale,
)
from autoscaler.config import Behavior, ScalingPolicy, ScalingRules
from metrics.sample import Sample
from policies.base import Desire, PolicyContext
from policies.target import TargetParams, TargetPolicy

NOW = 10_000.0


def wants(replicas: int, name: str = "0:target") -> tuple[str, Desire]:
    return (name, Desire.scale_to(replicas, f"wants {replicas}"))


def idle(name: str = "0:target") -> tuple[str, Desire]:
    return (name, Desire.idle("no traffic in the window"))


def unknown(name: str = "1:latency-slo") -> tuple[str, Desire]:
    return (name, Desire.unknown("ttft_p90: query timed out"))


def rules(
    window: int | None = None,
    select: str = "Max",
    policies: list[tuple[str, int, int]] | None = None,
) -> ScalingRules:
    scaling_policies = None
    if policies is not None:
        scaling_policies = [ScalingPolicy(type=kind, value=value, periodSeconds=period) for kind, value, period in policies]
    return ScalingRules(stabilizationWindowSeconds=window, selectPolicy=select, policies=scaling_policies)


DEFAULT = Behavior()
NO_DOWN_WINDOW = Behavior(scaleDown=rules(window=0))


@dataclass
class Case:
    name: str
    current: int
    desires: list[tuple[str, Desire]]
    expected: int
    behavior: Behavior | None = DEFAULT
    min_replicas: int = 1
    max_replicas: int = 100
    floor: int = 0
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    scale_events: list[tuple[float, int]] = field(default_factory=list)


def run(case: Case):
    return apply_behavior(
        now=NOW,
        current=case.current,
        desires=case.desires,
        min_replicas=case.min_replicas,
        max_replicas=case.max_replicas,
        floor=case.floor,
        behavior=case.behavior,
        history=ScaleHistory(list(case.recommendations), list(case.scale_events)),
    )


def evaluate_target(params: dict, value: float, current: int) -> tuple[str, Desire]:
    policy = TargetPolicy(TargetParams(**params))
    context = PolicyContext(now=NOW, target="llm/pclq/decode", current_replicas=current, samples={params["signal"]: Sample.of(value)})
    return ("0:target", policy.evaluate(context).desire)


# Worked cases of the HPA's own tests, run through the target policy and the behaviour layer.
WORKED_CASES = [
    Case(
        "cpu scale-up 3 to 5 at 30 percent",
        current=3,
        # 300, 500 and 700 millicores of 1 CPU requested each: mean utilisation 0.5.
        desires=[evaluate_target({"signal": "cpu_utilisation", "type": "Value", "value": 0.3}, 0.5, 3)],
        expected=5,
    ),
    Case(
        "pods metric 3 to 6",
        current=3,
        # Pods report 50, 10 and 30 against a per-pod target of 15: the sum is 90.
        desires=[evaluate_target({"signal": "queue_length", "type": "AverageValue", "value": 15}, 90, 3)],
        expected=6,
    ),
    Case(
        "inside tolerance stays 3",
        current=3,
        desires=[evaluate_target({"signal": "cpu_utilisation", "type": "Value", "value": 1.0}, 1.02, 3)],
        expected=3,
    ),
    Case("no behavior 3 to 1000 gives 6", current=3, desires=[wants(1000)], behavior=None, max_replicas=2000, expected=6),
    Case("default behavior 10 to 50 gives 20", current=10, desires=[wants(50)], expected=20),
]


CASES = [
    # Combination of desires.
    Case("largest desire wins", current=3, desires=[wants(4, "a"), wants(7, "b"), wants(2, "c")], expected=7),
    Case("idle votes for minReplicas", current=5, desires=[idle()], behavior=NO_DOWN_WINDOW, min_replicas=2, expected=2),
    Case("idle goes to gang floor", current=5, desires=[idle()], behavior=NO_DOWN_WINDOW, floor=3, expected=3),
    Case("idle with min 0 reaches zero", current=5, desires=[idle()], behavior=NO_DOWN_WINDOW, min_replicas=0, expected=0),
    Case("replicas beat idle", current=5, desires=[idle("a"), wants(4, "b")], behavior=NO_DOWN_WINDOW, expected=4),
    # Missing data never scales down.
    Case("unknown blocks scale-down", current=6, desires=[wants(2), unknown()], behavior=NO_DOWN_WINDOW, expected=6),
    Case("unknown allows scale-up", current=6, desires=[wants(9), unknown()], expected=9),
    Case("all unknown holds", current=6, desires=[unknown("a"), unknown("b")], expected=6),
    Case("unknown blocks idle", current=6, desires=[idle(), unknown()], behavior=NO_DOWN_WINDOW, expected=6),
    Case("unknown without behavior holds", current=6, desires=[wants(1), unknown()], behavior=None, expected=6),
    # Bounds.
    Case("live above max goes to max", current=12, desires=[unknown()], max_replicas=10, expected=10),
    Case("live below floor goes to floor", current=1, desires=[unknown()], floor=3, expected=3),
    Case("live below min goes to min", current=0, desires=[idle()], min_replicas=2, expected=2),
    Case("desire above max is capped", current=8, desires=[wants(50)], max_replicas=10, expected=10),
    Case("desire below min is raised", current=5, desires=[wants(0)], behavior=NO_DOWN_WINDOW, min_replicas=2, expected=2),
    Case("floor above max capped at max", current=10, desires=[idle()], floor=12, max_replicas=10, expected=10),
    # Rate limits and selectPolicy.
    Case("default up picks Pods 4 from 1", current=1, desires=[wants(100)], expected=5),
    Case("default up picks Percent 100 from 10", current=10, desires=[wants(100)], expected=20),
    Case(
        "selectPolicy Min up",
        current=10,
        desires=[wants(50)],
        behavior=Behavior(scaleUp=rules(select="Min", policies=[("Pods", 4, 60), ("Percent", 100, 60)])),
        expected=14,
    ),
    Case("selectPolicy Disabled up", current=10, desires=[wants(50)], behavior=Behavior(scaleUp=rules(select="Disabled")), expected=10),
    Case(
        "selectPolicy Disabled down",
        current=10,
        desires=[wants(2)],
        behavior=Behavior(scaleDown=rules(window=0, select="Disabled")),
        expected=10,
    ),
    Case(
        "selectPolicy Min down",
        current=10,
        desires=[wants(2)],
        behavior=Behavior(scaleDown=rules(window=0, select="Min", policies=[("Pods", 1, 60), ("Percent", 50, 60)])),
        expected=9,
    ),
    Case(
        "selectPolicy Max down",
        current=10,
        desires=[wants(2)],
        behavior=Behavior(scaleDown=rules(window=0, policies=[("Pods", 1, 60), ("Percent", 50, 60)])),
        expected=5,
    ),
    Case(
        "down Pods 1 per 60s",
        current=10,
        desires=[wants(2)],
        behavior=Behavior(scaleDown=rules(window=0, policies=[("Pods", 1, 60)])),
        expected=9,
    ),
    Case(
        "down limit counts earlier removal",
        current=10,
        desires=[wants(2)],
        behavior=Behavior(scaleDown=rules(window=0, policies=[("Pods", 1, 60)])),
        scale_events=[(NOW - 30, -1)],
        expected=10,
    ),
    Case(
        "event one period old no longer counts",
        current=10,
        desires=[wants(2)],
        behavior=Behavior(scaleDown=rules(window=0, policies=[("Pods", 1, 60)])),
        scale_events=[(NOW - 60, -1)],
        expected=9,
    ),
    Case(
        "up limit counts earlier addition",
        current=20,
        desires=[wants(50)],
        behavior=Behavior(scaleUp=rules(policies=[("Percent", 100, 15)])),
        scale_events=[(NOW - 10, 10)],
        expected=20,
    ),
    Case(
        "up limit adds back earlier removal",
        current=8,
        desires=[wants(50)],
        behavior=Behavior(scaleUp=rules(policies=[("Pods", 2, 60)])),
        scale_events=[(NOW - 30, -2)],
        expected=12,
    ),
    Case(
        "down Percent 50 rounds down",
        current=5,
        desires=[wants(1)],
        behavior=Behavior(scaleDown=rules(window=0, policies=[("Percent", 50, 15)])),
        expected=2,
    ),
    Case(
        "up Percent 10 rounds up",
        current=3,
        desires=[wants(10)],
        behavior=Behavior(scaleUp=rules(policies=[("Percent", 10, 15)])),
        expected=4,
    ),
    Case(
        "up Percent 10 of 10 is 11",
        current=10,
        desires=[wants(20)],
        behavior=Behavior(scaleUp=rules(policies=[("Percent", 10, 15)])),
        expected=11,
    ),
    Case("scale from zero default behavior", current=0, desires=[wants(10)], min_replicas=0, expected=4),
    # Stabilisation windows.
    Case("down window keeps highest", current=8, desires=[wants(3)], recommendations=[(NOW - 100, 8)], expected=8),
    Case(
        "down window keeps a middle value",
        current=8,
        desires=[wants(3)],
        recommendations=[(NOW - 100, 5), (NOW - 50, 4)],
        expected=5,
    ),
    Case("down window expired", current=8, desires=[wants(3)], recommendations=[(NOW - 301, 8)], expected=3),
    Case("down window edge excluded", current=8, desires=[wants(3)], recommendations=[(NOW - 300, 8)], expected=3),
    Case(
        "up window keeps lowest",
        current=3,
        desires=[wants(9)],
        behavior=Behavior(scaleUp=rules(window=60)),
        recommendations=[(NOW - 30, 4)],
        expected=4,
    ),
    Case(
        "up window lowest below live holds",
        current=3,
        desires=[wants(9)],
        behavior=Behavior(scaleUp=rules(window=60)),
        recommendations=[(NOW - 30, 2)],
        expected=3,
    ),
    Case("legacy down window holds", current=7, desires=[wants(2)], behavior=None, recommendations=[(NOW - 200, 7)], expected=7),
    Case("legacy window edge included", current=7, desires=[wants(2)], behavior=None, recommendations=[(NOW - 300, 7)], expected=7),
    Case("legacy window expired", current=7, desires=[wants(2)], behavior=None, recommendations=[(NOW - 301, 7)], expected=2),
    # The legacy HPA takes the window maximum even when it is above the live count.
    Case("legacy window max above live", current=5, desires=[wants(5)], behavior=None, recommendations=[(NOW - 100, 9)], expected=9),
    Case("legacy scale from zero", current=0, desires=[wants(10)], behavior=None, min_replicas=0, expected=4),
]


@pytest.mark.parametrize("case", WORKED_CASES + CASES, ids=lambda case: case.name)
def test_behavior_table(case: Case) -> None:
    outcome = run(case)

    assert outcome.desired == case.expected


def test_default_behavior_records_rate_limit_adjustment() -> None:
    outcome = run(Case("", current=10, desires=[wants(50)], expected=20))

    assert outcome.adjustments == (
        Adjustment(STEP_RATE_LIMIT, 50, 20, outcome.adjustments[0].reason),
    )
    assert "selectPolicy Max" in outcome.adjustments[0].reason
    assert outcome.reason.startswith("0:target: wants 50")


def test_adjustments_list_each_changing_step() -> None:
    outcome = run(Case("", current=8, desires=[wants(50)], max_replicas=10, expected=10))
    steps = [(adjustment.step, adjustment.before, adjustment.after) for adjustment in outcome.adjustments]

    assert steps == [(STEP_RATE_LIMIT, 50, 16), (STEP_BOUNDS, 16, 10)]


def test_stabilization_adjustment_names_window() -> None:
    outcome = run(Case("", current=8, desires=[wants(3)], recommendations=[(NOW - 100, 8)], expected=8))

    assert [adjustment.step for adjustment in outcome.adjustments] == [STEP_STABILIZATION]
    assert "300s" in outcome.adjustments[0].reason


def test_failing_metric_never_lets_another_scale_down() -> None:
    desires = [("0:target", Desire.scale_to(2, "itl_p90 0.01 < target 0.05")), ("1:latency-slo", Desire.unknown("ttft_p90: query timed out"))]
    outcome = apply_behavior(
        now=NOW, current=6, desires=desires, min_replicas=1, max_replicas=10, floor=0, behavior=NO_DOWN_WINDOW, history=ScaleHistory()
    )

    assert outcome.desired == 6
    assert outcome.reason == "scale-down blocked: 1:latency-slo: ttft_p90: query timed out"
    assert outcome.adjustments == (Adjustment(STEP_UNKNOWN, 2, 6, outcome.reason),)
    assert outcome.history.recommendations == []


def test_floor_above_max_reason() -> None:
    outcome = run(Case("", current=10, desires=[wants(10)], floor=12, max_replicas=10, expected=10))

    assert "gang floor 12 is above maxReplicas 10" in outcome.reason


def test_scale_event_recorded_on_change() -> None:
    outcome = run(Case("", current=10, desires=[wants(50)], expected=20))

    assert outcome.history.scale_events == [(NOW, 10)]
    assert outcome.history.recommendations == [(NOW, 50)]


def test_no_scale_event_without_change() -> None:
    outcome = run(Case("", current=4, desires=[wants(4)], expected=4))

    assert outcome.history.scale_events == []


def test_record_scale_is_pure() -> None:
    history = ScaleHistory([(1.0, 3)], [(1.0, 2)])

    updated = record_scale(history, now=5.0, old=4, new=1)

    assert updated.scale_events == [(1.0, 2), (5.0, -3)]
    assert history.scale_events == [(1.0, 2)]
    assert record_scale(history, now=5.0, old=4, new=4) == history


def test_history_pruned_to_longest_window() -> None:
    behavior = Behavior(scaleUp=rules(window=0, policies=[("Pods", 4, 60)]), scaleDown=rules(window=120))
    history = ScaleHistory([(NOW - 500, 9), (NOW - 100, 5)], [(NOW - 500, 1), (NOW - 30, 1)])

    outcome = apply_behavior(
        now=NOW, current=5, desires=[wants(5)], min_replicas=1, max_replicas=10, floor=0, behavior=behavior, history=history
    )

    assert outcome.history.recommendations == [(NOW - 100, 5), (NOW, 5)]
    assert outcome.history.scale_events == [(NOW - 30, 1)]


# Sequences over time: each row is (seconds since start, desire, expected count). The count
# decided at one tick is the live count of the next, as when every write succeeds.
SEQUENCES = {
    "down window holds for 300 s": (
        DEFAULT,
        10,
        [(0, 10, 10), (15, 2, 10), (150, 2, 10), (285, 2, 10), (300, 2, 2), (315, 2, 2)],
    ),
    "default scale-up doubles per period": (
        DEFAULT,
        1,
        [(0, 100, 5), (15, 100, 10), (30, 100, 20), (45, 100, 40), (60, 100, 80), (75, 100, 100)],
    ),
    "Pods 4 per 60s waits for the period": (
        Behavior(scaleUp=rules(policies=[("Pods", 4, 60)])),
        1,
        [(0, 20, 5), (15, 20, 5), (30, 20, 5), (45, 20, 5), (60, 20, 9), (75, 20, 9), (120, 20, 13)],
    ),
    "down Pods 2 per 30s with no window": (
        Behavior(scaleDown=rules(window=0, policies=[("Pods", 2, 30)])),
        10,
        [(0, 1, 8), (15, 1, 8), (30, 1, 6), (45, 1, 6), (60, 1, 4), (90, 1, 2), (120, 1, 1)],
    ),
    "up window 60 s ignores a spike": (
        Behavior(scaleUp=rules(window=60)),
        4,
        [(0, 4, 4), (15, 9, 4), (30, 4, 4), (45, 9, 4), (60, 9, 4), (90, 9, 8)],
    ),
    "legacy scale-up then down after 300 s": (
        None,
        2,
        [(0, 10, 4), (15, 10, 8), (30, 10, 10), (45, 3, 10), (330, 3, 10), (331, 3, 3)],
    ),
}


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_behavior_over_time(name: str) -> None:
    behavior, current, ticks = SEQUENCES[name]
    history = ScaleHistory()
    observed = []

    for seconds, desired, _ in ticks:
        outcome = apply_behavior(
            now=NOW + seconds,
            current=current,
            desires=[wants(desired)],
            min_replicas=1,
            max_replicas=100,
            floor=0,
            behavior=behavior,
            history=history,
        )
        current, history = outcome.desired, outcome.history
        observed.append(current)

    assert observed == [expected for _, _, expected in ticks]


def test_from_dict_rejects_invalid_entry() -> None:
    with pytest.raises(ValueError, match=r"recommendations\[1\] has an invalid replica count 'x'"):
        ScaleHistory.from_dict({"recommendations": [[1.0, 2], [2.0, "x"]]})


def test_from_dict_accepts_empty_mapping() -> None:
    assert ScaleHistory.from_dict({}) == ScaleHistory()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"current": -1}, "current must be >= 0"),
        ({"min_replicas": 5, "max_replicas": 3}, "min_replicas 5 is greater than max_replicas 3"),
        ({"desires": []}, "desires is empty"),
    ],
    ids=["negative current", "min above max", "no desires"],
)
def test_invalid_arguments_raise(arguments: dict, message: str) -> None:
    values = {
        "now": NOW,
        "current": 3,
        "desires": [wants(3)],
        "min_replicas": 1,
        "max_replicas": 10,
        "floor": 0,
        "behavior": None,
        "history": ScaleHistory(),
    }
    values.update(arguments)

    with pytest.raises(ValueError, match=message):
        apply_behavior(**values)


# --- Properties ---------------------------------------------------------------------------

desire_strategy = st.one_of(
    st.integers(min_value=0, max_value=300).map(lambda count: Desire.scale_to(count, "value")),
    st.just(Desire.idle("idle")),
    st.just(Desire.unknown("query failed")),
)
scaling_policy_strategy = st.builds(
    lambda kind, value, period: ScalingPolicy(type=kind, value=value, periodSeconds=period),
    st.sampled_from(["Pods", "Percent"]),
    st.integers(min_value=1, max_value=200),
    st.integers(min_value=1, max_value=600),
)
rules_strategy = st.one_of(
    st.none(),
    st.builds(
        lambda window, select, policies: ScalingRules(stabilizationWindowSeconds=window, selectPolicy=select, policies=policies),
        st.one_of(st.none(), st.integers(min_value=0, max_value=600)),
        st.sampled_from(["Max", "Min", "Disabled"]),
        st.one_of(st.none(), st.lists(scaling_policy_strategy, min_size=1, max_size=3)),
    ),
)
behavior_strategy = st.one_of(st.none(), st.builds(lambda up, down: Behavior(scaleUp=up, scaleDown=down), rules_strategy, rules_strategy))
entry_strategy = st.tuples(st.floats(min_value=NOW - 900, max_value=NOW), st.integers(min_value=0, max_value=300))
event_strategy = st.tuples(st.floats(min_value=NOW - 900, max_value=NOW), st.integers(min_value=-50, max_value=50).filter(bool))
history_strategy = st.builds(ScaleHistory, st.lists(entry_strategy, max_size=8), st.lists(event_strategy, max_size=8))


@st.composite
def scenarios(draw):
    min_replicas = draw(st.integers(min_value=0, max_value=20))
    return {
        "now": NOW,
        "current": draw(st.integers(min_value=0, max_value=80)),
        "desires": [(f"{index}:policy", desire) for index, desire in enumerate(draw(st.lists(desire_strategy, min_size=1, max_size=4)))],
        "min_replicas": min_replicas,
        "max_replicas": draw(st.integers(min_value=max(min_replicas, 1), max_value=60)),
        "floor": draw(st.integers(min_value=0, max_value=70)),
        "behavior": draw(behavior_strategy),
        "history": draw(history_strategy),
    }


def effective_bounds(scenario: dict) -> tuple[int, int]:
    upper = scenario["max_replicas"]
    return min(max(scenario["min_replicas"], scenario["floor"]), upper), upper


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_result_within_bounds(scenario: dict) -> None:
    lower, upper = effective_bounds(scenario)

    outcome = apply_behavior(**scenario)

    assert lower <= outcome.desired <= upper


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_unknown_never_scales_down(scenario: dict) -> None:
    lower, upper = effective_bounds(scenario)
    has_unknown = any(desire.kind.value == "unknown" for _, desire in scenario["desires"])

    outcome = apply_behavior(**scenario)

    if has_unknown and lower <= scenario["current"] <= upper:
        assert outcome.desired >= scenario["current"]


@settings(max_examples=200, deadline=None)
@given(
    current=st.integers(min_value=1, max_value=60),
    desires=st.lists(desire_strategy, min_size=1, max_size=4),
    behavior=st.sampled_from([None, NO_DOWN_WINDOW, Behavior(scaleDown=rules(window=0, policies=[("Pods", 100, 15)]))]),
)
def test_unknown_never_scales_down_without_window(current: int, desires: list[Desire], behavior: Behavior | None) -> None:
    named = [(f"{index}:policy", desire) for index, desire in enumerate(desires)]

    outcome = apply_behavior(
        now=NOW, current=current, desires=named, min_replicas=0, max_replicas=100, floor=0, behavior=behavior, history=ScaleHistory()
    )

    if any(desire.kind.value == "unknown" for desire in desires):
        assert outcome.desired >= current


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_deterministic_and_input_unchanged(scenario: dict) -> None:
    history_before = copy.deepcopy(scenario["history"])

    first = apply_behavior(**scenario)
    second = apply_behavior(**scenario)

    assert first == second
    assert scenario["history"] == history_before


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_history_round_trips_through_json(scenario: dict) -> None:
    history = apply_behavior(**scenario).history

    restored = ScaleHistory.from_dict(json.loads(json.dumps(history.to_dict())))

    assert restored == history
