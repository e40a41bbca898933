"""`queue`, `kv-spare` and `throughput`: table cases, stuck queues and missing data."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from metrics.sample import Sample
from policies.base import DesireKind, PolicyContext
from policies.kv_spare import KvSpareParams, KvSparePolicy
from policies.queue import QueueParams, QueuePolicy, StuckQueue
from policies.throughput import ThroughputParams, ThroughputPolicy


def evaluate(policy, values, *, current, now=0.0, state=None, ready=None):
    samples = {name: value if isinstance(value, Sample) else Sample.of(value) for name, value in values.items()}
    context = PolicyContext(
        now=now,
        target="llm/pclq/pcs-0-decode",
        current_replicas=current,
        samples=samples,
        ready_replicas=ready,
        state=state or {},
    )
    result = policy.evaluate(context)
    json.dumps(result.state)
    return result


# --- queue ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, waiting, current, expected",
    [
        ("on target keeps", 8, 4, 4),
        ("inside tolerance keeps", 8.6, 4, 4),
        ("above target scales up", 20, 4, 10),
        ("below target scales down", 2, 4, 1),
        ("empty queue proposes zero", 0, 4, 0),
        ("from zero replicas", 5, 0, 3),
    ],
)
def test_queue_table(case, waiting, current, expected):
    policy = QueuePolicy(QueueParams(target_waiting_per_replica=2))

    desire = evaluate(policy, {"requests_waiting": waiting, "decode_throughput": 100.0}, current=current).desire

    assert desire.kind is DesireKind.REPLICAS, case
    assert desire.replicas == expected, (case, desire.reason)


def test_queue_idle_and_unknown():
    policy = QueuePolicy(QueueParams())

    idle = evaluate(policy, {"requests_waiting": Sample.idle(), "decode_throughput": 0.0}, current=3).desire
    unknown = evaluate(policy, {"requests_waiting": Sample.unknown("timed out"), "decode_throughput": 0.0}, current=3).desire

    assert idle.kind is DesireKind.IDLE
    assert unknown.kind is DesireKind.UNKNOWN


def run_ticks(policy, values, *, ticks, current=3, step=15.0, ready=None):
    state: dict = {}
    desires = []
    for tick in range(ticks):
        result = evaluate(policy, values, current=current, now=tick * step, state=state, ready=ready)
        state = result.state
        desires.append(result.desire)
    return desires


def test_queue_stuck_stops_voting():
    policy = QueuePolicy(QueueParams(target_waiting_per_replica=2, stuck_seconds=60))

    desires = run_ticks(policy, {"requests_waiting": 30.0, "decode_throughput": 0.0}, ticks=6)

    assert [d.replicas for d in desires] == [15, 15, 15, 15, 0, 0]
    assert "stuck queue" in desires[-1].reason


def test_queue_draining_is_not_stuck():
    policy = QueuePolicy(QueueParams(target_waiting_per_replica=2, stuck_seconds=60))
    state: dict = {}
    for tick, waiting in enumerate([30.0, 28.0, 26.0, 24.0, 22.0, 20.0, 18.0]):
        result = evaluate(policy, {"requests_waiting": waiting, "decode_throughput": 0.0}, current=3, now=tick * 15.0, state=state)
        state = result.state

    assert result.desire.replicas == 9


def test_queue_not_stuck_without_ready_replicas():
    policy = QueuePolicy(QueueParams(target_waiting_per_replica=2, stuck_seconds=60))

    desires = run_ticks(policy, {"requests_waiting": 30.0, "decode_throughput": 0.0}, ticks=8, ready=0)

    assert desires[-1].replicas == 15


def test_queue_unknown_throughput_keeps_voting():
    policy = QueuePolicy(QueueParams(target_waiting_per_replica=2, stuck_seconds=60))

    desires = run_ticks(policy, {"requests_waiting": 30.0, "decode_throughput": Sample.unknown("no series")}, ticks=8)

    assert desires[-1].replicas == 15


def test_queue_unknown_throughput_blocks_scale_down():
    policy = QueuePolicy(QueueParams(target_waiting_per_replica=2))

    desire = evaluate(policy, {"requests_waiting": 1.0, "decode_throughput": Sample.unknown("no series")}, current=4).desire

    assert desire.kind is DesireKind.UNKNOWN
    assert "decode_throughput" in desire.reason


def test_queue_signals():
    assert QueuePolicy(QueueParams()).signals() == ["requests_waiting", "decode_throughput"]
    assert QueuePolicy(QueueParams(stuck_seconds=None)).signals() == ["requests_waiting"]


@pytest.mark.parametrize(
    "data, field",
    [
        ({"target_waiting_per_replica": 0}, "target_waiting_per_replica"),
        ({"signal": "bad name"}, "signal"),
        ({"stuck_seconds": -1}, "stuck_seconds"),
        ({"targetWaiting": 3}, "targetWaiting"),
    ],
)
def test_queue_invalid_params(data, field):
    with pytest.raises(ValidationError, match=field):
        QueueParams.model_validate(data)


def test_stuck_tracker_resets_on_drain():
    tracker = StuckQueue()
    tracker.update(0, 10, False)
    tracker.update(100, 10, False)
    assert tracker.stuck_for(100) == 100

    tracker.update(115, 9, False)

    assert tracker.stuck_for(115) == 0
    assert tracker.level == 9


def test_stuck_tracker_malformed_state_restarts():
    tracker = StuckQueue.from_state({"since": "yesterday"})

    assert tracker.since is None


# --- kv-spare ---------------------------------------------------------------------------------


def kv(kv_mean, kv_max, waiting, running, throughput=500.0):
    return {
        "kv_cache_usage": kv_mean,
        "kv_cache_usage_max": kv_max,
        "requests_waiting": waiting,
        "requests_running": running,
        "decode_throughput": throughput,
    }


@pytest.mark.parametrize(
    "case, values, current, expected",
    [
        ("spare enough keeps", kv(0.5, 0.6, 0, 40), 4, 4),
        ("spare kv below 0.10 scales up", kv(0.75, 0.78, 0, 40), 4, 5),
        ("all saturated by kv", kv(0.85, 0.9, 0, 60), 4, 5),
        ("all saturated by queue", kv(0.5, 0.6, 24, 60), 4, 12),
        ("spare queue below 3", kv(0.5, 0.6, 10, 40), 4, 5),
        ("hot replica excluded from spare", kv(0.3, 0.85, 0, 40), 4, 2),
        ("hot replica leaves too little spare", kv(0.79, 0.95, 0, 40), 3, 4),
        ("low load scales down", kv(0.2, 0.25, 0, 10), 4, 2),
        ("scale-down headroom keeps", kv(0.6, 0.65, 0, 40), 4, 4),
        ("one replica cannot scale down", kv(0.1, 0.1, 0, 2), 1, 1),
        ("two replicas may scale down", kv(0.1, 0.1, 0, 2), 2, 1),
        ("one of two saturated keeps", kv(0.45, 0.85, 0, 20), 2, 2),
        ("scale from zero on queue", kv(0.0, 0.0, 5, 0), 0, 3),
    ],
)
def test_kv_spare_table(case, values, current, expected):
    policy = KvSparePolicy(KvSpareParams())

    desire = evaluate(policy, values, current=current).desire

    assert desire.kind is DesireKind.REPLICAS, (case, desire.reason)
    assert desire.replicas == expected, (case, desire.reason)


def test_kv_spare_zero_load_is_idle():
    policy = KvSparePolicy(KvSpareParams())

    desire = evaluate(policy, kv(0.0, 0.0, 0, 0, throughput=0.0), current=5).desire

    assert desire.kind is DesireKind.IDLE


def test_kv_spare_stuck_queue_releases_replicas():
    policy = KvSparePolicy(KvSpareParams(stuck_seconds=60))

    desires = run_ticks(policy, kv(0.1, 0.1, 40, 0, throughput=0.0), ticks=8, current=6)

    assert desires[0].replicas == 20
    assert desires[-1].kind is DesireKind.IDLE
    assert "stuck" in desires[-1].reason


def test_kv_spare_stuck_saturated_stops_scale_up():
    policy = KvSparePolicy(KvSpareParams(stuck_seconds=60))

    desires = run_ticks(policy, kv(0.9, 0.95, 40, 30, throughput=0.0), ticks=8, current=6)

    assert desires[0].replicas > 6
    assert desires[-1].replicas == 6
    assert "no scale-up vote" in desires[-1].reason


@pytest.mark.parametrize("missing", ["kv_cache_usage", "kv_cache_usage_max", "requests_waiting", "requests_running"])
def test_kv_spare_unknown_blocks_scale_down(missing):
    policy = KvSparePolicy(KvSpareParams())
    values = kv(0.2, 0.25, 0, 10)
    values[missing] = Sample.unknown("query failed")

    desire = evaluate(policy, values, current=4).desire

    assert desire.kind is DesireKind.UNKNOWN
    assert missing in desire.reason


def test_kv_spare_unknown_still_scales_up():
    policy = KvSparePolicy(KvSpareParams())
    values = kv(0.85, 0.9, 0, 60)
    values["requests_waiting"] = Sample.unknown("query failed")

    desire = evaluate(policy, values, current=4).desire

    assert desire.replicas == 5


def test_kv_spare_percentage_is_unknown():
    policy = KvSparePolicy(KvSpareParams())

    desire = evaluate(policy, kv(45.0, 60.0, 0, 10), current=4).desire

    assert desire.kind is DesireKind.UNKNOWN


def test_kv_spare_invalid_params():
    with pytest.raises(ValidationError, match="min_spare_kv"):
        KvSpareParams(kv_saturation=0.5, min_spare_kv=0.6)
    with pytest.raises(ValidationError, match="min_spare_queue"):
        KvSpareParams(queue_saturation=2, min_spare_queue=3)


# --- throughput -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, throughput, current, expected",
    [
        ("on target keeps", 20_000, 4, 4),
        ("inside tolerance keeps", 21_500, 4, 4),
        ("above target scales up", 31_000, 4, 7),
        ("below target scales down", 9_000, 4, 2),
        ("from zero replicas", 12_000, 0, 3),
    ],
)
def test_throughput_table(case, throughput, current, expected):
    policy = ThroughputPolicy(ThroughputParams(target_tokens_per_second_per_replica=5000))

    desire = evaluate(policy, {"decode_throughput": throughput}, current=current).desire

    assert desire.replicas == expected, (case, desire.reason)


@pytest.mark.parametrize("sample", [Sample.of(0.0), Sample.idle()])
def test_throughput_zero_is_idle(sample):
    policy = ThroughputPolicy(ThroughputParams(target_tokens_per_second_per_replica=5000))

    assert evaluate(policy, {"decode_throughput": sample}, current=4).desire.kind is DesireKind.IDLE


def test_throughput_unknown():
    policy = ThroughputPolicy(ThroughputParams(target_tokens_per_second_per_replica=5000))

    desire = evaluate(policy, {"decode_throughput": Sample.unknown("no series")}, current=4).desire

    assert desire.kind is DesireKind.UNKNOWN


def test_throughput_target_required():
    with pytest.raises(ValidationError, match="target_tokens_per_second_per_replica"):
        ThroughputParams.model_validate({})


# --- Properties -------------------------------------------------------------------------------

maybe_value = st.one_of(
    st.floats(min_value=0, max_value=1e4, allow_nan=False),
    st.floats(min_value=0, max_value=1, allow_nan=False),
    st.just(Sample.idle()),
    st.just(Sample.unknown("query failed")),
    st.just(Sample.of(-1.0)),
)

POLICIES = {
    "queue": lambda: QueuePolicy(QueueParams()),
    "kv-spare": lambda: KvSparePolicy(KvSpareParams()),
    "throughput": lambda: ThroughputPolicy(ThroughputParams(target_tokens_per_second_per_replica=1000)),
}


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(sorted(POLICIES)),
    current=st.integers(0, 100),
    ready=st.one_of(st.none(), st.integers(0, 100)),
    values=st.fixed_dictionaries(
        {
            name: maybe_value
            for name in ("kv_cache_usage", "kv_cache_usage_max", "requests_waiting", "requests_running", "decode_throughput")
        }
    ),
    ticks=st.integers(1, 4),
)
def test_property_unknown_never_scales_down(name, current, ready, values, ticks):
    policy = POLICIES[name]()
    chosen = {signal: values[signal] for signal in policy.signals()}
    unknown = [
        signal
        for signal in chosen
        if isinstance(chosen[signal], Sample) and (chosen[signal].is_unknown or (chosen[signal].is_value and chosen[signal].value < 0))
    ]

    state: dict = {}
    for tick in range(ticks):
        result = evaluate(policy, chosen, current=current, now=tick * 15.0, state=state, ready=ready)
        state = result.state
    desire = result.desire

    if desire.kind is DesireKind.REPLICAS:
        assert desire.replicas >= 0
    if unknown:
        assert desire.kind is not DesireKind.IDLE
        if desire.kind is DesireKind.REPLICAS:
            assert desire.replicas >= current


# --- End to end through the engine ------------------------------------------------------------

ENGINE_TARGET = "llm/pclq/pcs-0-decode"


def built_in_policies():
    from policies.dynamo_compatible import DynamoCompatibleParams, DynamoCompatiblePolicy
    from policies.sla_planner import SlaPlannerParams, SlaPlannerPolicy

    return {
        "queue": QueuePolicy(QueueParams()),
        "kv-spare": KvSparePolicy(KvSpareParams()),
        "throughput": ThroughputPolicy(ThroughputParams(target_tokens_per_second_per_replica=1000)),
        "sla-planner": SlaPlannerPolicy(SlaPlannerParams(role="decode")),
        "dynamo-compatible": DynamoCompatiblePolicy(DynamoCompatibleParams(role="prefill")),
    }


ENGINE_POLICIES = built_in_policies()
ENGINE_SIGNALS = sorted({signal for policy in ENGINE_POLICIES.values() for signal in policy.signals()})


@settings(max_examples=120, deadline=None)
@given(
    name=st.sampled_from(sorted(ENGINE_POLICIES)),
    current=st.integers(0, 30),
    bounds=st.tuples(st.integers(1, 10), st.integers(0, 20), st.integers(0, 4)),
    values=st.fixed_dictionaries({signal: maybe_value for signal in ENGINE_SIGNALS}),
)
def test_property_engine_bounds(name, current, bounds, values):
    from autoscaler.engine import EngineState, TargetSpec, decide

    min_replicas, extra, floor = bounds
    max_replicas = min_replicas + extra
    floor = min(floor, max_replicas)
    policy = ENGINE_POLICIES[name]
    samples = {signal: value if isinstance(value, Sample) else Sample.of(value) for signal, value in values.items()}
    spec = TargetSpec(target=ENGINE_TARGET, rule="r", policies=(policy,), min_replicas=min_replicas, max_replicas=max_replicas, floor=floor)

    decisions, _ = decide(now=1000.0, specs=[spec], observations={ENGINE_TARGET: samples}, live={ENGINE_TARGET: current}, state=EngineState())

    desired = decisions[0].desired
    assert max(min_replicas, floor) <= desired <= max_replicas
    unknown = [s for s in policy.signals() if samples[s].is_unknown or (samples[s].is_value and samples[s].value < 0)]
    if unknown:
        assert desired >= min(current, max_replicas), decisions[0].reason


def test_registry_accepts_policies():
    from policies.dynamo_compatible import DynamoCompatiblePolicy
    from policies.registry import PolicyRegistry
    from policies.sla_planner import SlaPlannerPolicy

    registry = PolicyRegistry()
    for policy_class in (QueuePolicy, KvSparePolicy, ThroughputPolicy, SlaPlannerPolicy, DynamoCompatiblePolicy):
        registry.register(policy_class)

    created = {
        "queue": registry.create("queue", {"target_waiting_per_replica": 3}),
        "kv-spare": registry.create("kv-spare", {}),
        "throughput": registry.create("throughput", {"target_tokens_per_second_per_replica": 4000}),
        "sla-planner": registry.create("sla-planner", {"role": "decode", "forecaster": {"kind": "arima", "p": 1}}),
        "dynamo-compatible": registry.create("dynamo-compatible", {"role": "prefill", "predictor": {"kind": "kalman"}}),
    }

    assert registry.names() == ["dynamo-compatible", "kv-spare", "queue", "sla-planner", "throughput"]
    assert created["sla-planner"].params.forecaster.p == 1
    assert created["dynamo-compatible"].predictor_config.step_seconds == 180
