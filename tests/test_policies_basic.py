"""Built-in policies target, latency-slo and kv-cache: table cases and properties."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from metrics.sample import Sample, SampleKind
from policies.base import Desire, DesireKind, PolicyContext
from policies.kv_cache import KvCacheParams, KvCachePolicy
from policies.latency_slo import LatencySloParams, LatencySloPolicy
from policies.target import TargetParams, TargetPolicy


@dataclass
class Case:
    name: str
    params: dict
    sample: Sample
    current: int
    expected: int | DesireKind
    ready: int | None = None


def evaluate(policy, case: Case) -> Desire:
    signal = policy.signals()[0]
    context = PolicyContext(
        now=0.0,
        target="llm/podclique/pcs-0-decode",
        current_replicas=case.current,
        samples={signal: case.sample},
        ready_replicas=case.ready,
    )
    return policy.evaluate(context).desire


def check(desire: Desire, expected: int | DesireKind) -> None:
    if isinstance(expected, DesireKind):
        assert desire.kind is expected
        assert desire.replicas is None
    else:
        assert desire.kind is DesireKind.REPLICAS
        assert desire.replicas == expected


ITL = {"signal": "itl_p90", "type": "Value", "value": 0.05}
RATE = {"signal": "request_rate", "type": "AverageValue", "value": 15}

TARGET_CASES = [
    Case("Value above target", ITL, Sample.of(0.062), current=4, expected=5),
    Case("Value below target", ITL, Sample.of(0.02), current=5, expected=2),
    Case("Value inside tolerance", ITL, Sample.of(0.052), current=4, expected=4),
    Case("Value at band edge stays", {**ITL, "value": 1.0}, Sample.of(1.1), current=4, expected=4),
    Case("Value just outside band", {**ITL, "value": 1.0}, Sample.of(1.11), current=4, expected=5),
    Case("Value uses ready replicas", {**ITL, "value": 1.0}, Sample.of(2.0), current=6, ready=3, expected=6),
    Case("Value without ready uses live", {**ITL, "value": 1.0}, Sample.of(2.0), current=6, ready=0, expected=12),
    Case("Value from zero replicas", {**ITL, "value": 1.0}, Sample.of(2.5), current=0, expected=3),
    Case("Value zero metric", ITL, Sample.of(0.0), current=4, expected=0),
    Case("AverageValue above target", RATE, Sample.of(90), current=3, expected=6),
    Case("AverageValue below target", RATE, Sample.of(20), current=6, expected=2),
    Case("AverageValue inside tolerance", RATE, Sample.of(46), current=3, expected=3),
    Case("AverageValue ignores ready", RATE, Sample.of(90), current=3, ready=1, expected=6),
    Case("AverageValue from zero replicas", {**RATE, "value": 2}, Sample.of(7), current=0, expected=4),
    Case("AverageValue zero at zero", RATE, Sample.of(0), current=0, expected=0),
    Case("scale-up tolerance widens band", {**ITL, "value": 1.0, "scale_up_tolerance": 0.5}, Sample.of(1.4), current=4, expected=4),
    Case("scale-down tolerance narrows band", {**ITL, "value": 1.0, "scale_down_tolerance": 0.05}, Sample.of(0.9), current=10, expected=9),
    Case("tolerance zero reacts to 1 percent", {**ITL, "value": 1.0, "tolerance": 0}, Sample.of(1.01), current=10, expected=11),
    Case("idle sample is idle", ITL, Sample.idle(), current=4, expected=DesireKind.IDLE),
    Case("unknown sample is unknown", ITL, Sample.unknown("query timed out"), current=4, expected=DesireKind.UNKNOWN),
    Case("negative value is unknown", ITL, Sample.of(-1.0), current=4, expected=DesireKind.UNKNOWN),
]

SLO = {"signal": "ttft_p90", "slo_seconds": 0.5}

LATENCY_CASES = [
    Case("above slo scales up", SLO, Sample.of(0.8), current=4, expected=7),
    Case("inside band stays", SLO, Sample.of(0.52), current=4, expected=4),
    Case("band edge stays", {**SLO, "slo_seconds": 1.0}, Sample.of(0.9), current=4, expected=4),
    # Removing one of 2 replicas would double the latency to 0.6 > 0.5: no N -> N-1 move.
    Case("one fewer would miss slo", SLO, Sample.of(0.3), current=2, expected=2),
    Case("one fewer within slo at 10", SLO, Sample.of(0.44), current=10, expected=9),
    Case("one fewer just within slo", SLO, Sample.of(0.449), current=10, expected=9),
    Case("one fewer at 5 estimated over", SLO, Sample.of(0.44), current=5, expected=5),
    Case("far below slo scales down", SLO, Sample.of(0.2), current=10, expected=4),
    Case("one replica never goes to zero", SLO, Sample.of(0.01), current=1, expected=1),
    Case("value with zero replicas asks one", SLO, Sample.of(0.1), current=0, expected=1),
    Case("starting replicas are not counted twice", SLO, Sample.of(1.0), current=8, ready=4, expected=8),
    Case("never below live while above slo", SLO, Sample.of(0.6), current=8, ready=2, expected=8),
    # (6.85 / 60 / 0.05) * 60 computes as 137.00000000000003, but the exact product is 137.
    Case("float noise adds no replica", {**SLO, "slo_seconds": 0.05, "tolerance": 0}, Sample.of(6.8500000000000005 / 60), current=60, expected=137),
    Case("idle sample is idle", SLO, Sample.idle(), current=3, expected=DesireKind.IDLE),
    Case("unknown sample is unknown", SLO, Sample.unknown("no series"), current=3, expected=DesireKind.UNKNOWN),
]

KV_CASES = [
    Case("above target scales up", {}, Sample.of(0.95), current=4, expected=5),
    Case("inside tolerance stays", {}, Sample.of(0.84), current=4, expected=4),
    Case("below target scales down", {}, Sample.of(0.2), current=8, expected=2),
    Case("small usage keeps one", {}, Sample.of(0.01), current=8, expected=1),
    Case("target 1 full cache stays", {"target_utilisation": 1.0}, Sample.of(1.0), current=4, expected=4),
    Case("uses ready replicas", {}, Sample.of(0.96), current=10, ready=5, expected=6),
    Case("value with zero replicas asks one", {}, Sample.of(0.5), current=0, expected=1),
    Case("zero usage is idle", {}, Sample.of(0.0), current=4, expected=DesireKind.IDLE),
    Case("percentage is unknown", {}, Sample.of(85.0), current=4, expected=DesireKind.UNKNOWN),
    Case("idle sample is idle", {}, Sample.idle(), current=4, expected=DesireKind.IDLE),
    Case("unknown sample is unknown", {}, Sample.unknown("scrape failed"), current=4, expected=DesireKind.UNKNOWN),
]


@pytest.mark.parametrize("case", TARGET_CASES, ids=lambda case: case.name)
def test_target_table(case: Case) -> None:
    check(evaluate(TargetPolicy(TargetParams(**case.params)), case), case.expected)


@pytest.mark.parametrize("case", LATENCY_CASES, ids=lambda case: case.name)
def test_latency_slo_table(case: Case) -> None:
    check(evaluate(LatencySloPolicy(LatencySloParams(**case.params)), case), case.expected)


@pytest.mark.parametrize("case", KV_CASES, ids=lambda case: case.name)
def test_kv_cache_table(case: Case) -> None:
    check(evaluate(KvCachePolicy(KvCacheParams(**case.params)), case), case.expected)


def test_target_reason_names_signal_and_ratio() -> None:
    desire = evaluate(TargetPolicy(TargetParams(**ITL)), Case("", ITL, Sample.of(0.062), current=4, expected=5))

    assert desire.reason == "itl_p90 0.062 > target 0.05 (ratio 1.24)"


def test_latency_hold_reason_gives_estimate() -> None:
    desire = evaluate(LatencySloPolicy(LatencySloParams(**SLO)), Case("", SLO, Sample.of(0.3), current=2, expected=2))

    assert desire.reason == "ttft_p90 0.3 < slo 0.5 (ratio 0.60): keep 2, estimated 0.6 with 1 replicas would exceed slo 0.5"


def test_unknown_reason_is_kept() -> None:
    desire = evaluate(TargetPolicy(TargetParams(**ITL)), Case("", ITL, Sample.unknown("query timed out"), current=4, expected=0))

    assert desire.reason == "itl_p90: query timed out"


@pytest.mark.parametrize(
    ("model", "params", "field"),
    [
        (TargetParams, {**ITL, "value": 0}, "value"),
        (TargetParams, {**ITL, "type": "Utilization"}, "type"),
        (TargetParams, {**ITL, "tolerance": 1.0}, "tolerance"),
        (TargetParams, {**ITL, "signal": "itl p90"}, "signal"),
        (TargetParams, {**ITL, "tolerence": 0.2}, "tolerence"),
        (LatencySloParams, {"signal": "kv_cache_usage", "slo_seconds": 0.5}, "signal"),
        (LatencySloParams, {"signal": "itl_p90", "slo_seconds": -0.5}, "slo_seconds"),
        (KvCacheParams, {"target_utilisation": 1.5}, "target_utilisation"),
        (KvCacheParams, {"target_utilisation": 0}, "target_utilisation"),
    ],
    ids=[
        "target value zero",
        "target unknown type",
        "target tolerance one",
        "target signal with space",
        "target misspelt field",
        "latency non-latency signal",
        "latency negative slo",
        "kv target above one",
        "kv target zero",
    ],
)
def test_invalid_params_name_field(model, params: dict, field: str) -> None:
    with pytest.raises(ValidationError) as error:
        model(**params)

    assert [item["loc"] for item in error.value.errors()] == [(field,)]


@pytest.mark.parametrize("signal", ["ttft_p90", "itl_mean", "queue_time_p99", "e2e_p50", "ttft"])
def test_latency_signal_names_accepted(signal: str) -> None:
    assert LatencySloParams(signal=signal, slo_seconds=1).signal == signal


# --- Properties ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    load=st.floats(min_value=0.01, max_value=40),
    start=st.integers(min_value=1, max_value=40),
    tolerance=st.sampled_from([0.0, 0.05, 0.1, 0.2]),
)
def test_latency_slo_closed_loop_never_flaps(load: float, start: int, tolerance: float) -> None:
    """With latency = load / replicas, the count moves in one direction only and then settles."""
    policy = LatencySloPolicy(LatencySloParams(signal="itl_p90", slo_seconds=0.5, tolerance=tolerance))
    counts = [start]
    for _ in range(12):
        current = counts[-1]
        context = PolicyContext(now=0.0, target="t", current_replicas=current, samples={"itl_p90": Sample.of(load / current)})
        counts.append(policy.evaluate(context).desire.replicas)

    steps = [after - before for before, after in zip(counts, counts[1:]) if after != before]
    assert all(step > 0 for step in steps) or all(step < 0 for step in steps)
    assert counts[-1] == counts[-2]
    assert load / counts[-1] <= 0.5 * (1 + tolerance)


def make_policies(draw) -> list:
    signal = draw(st.sampled_from(["ttft_p90", "itl_p90", "e2e_p99"]))
    return [
        TargetPolicy(
            TargetParams(
                signal=signal,
                type=draw(st.sampled_from(["Value", "AverageValue"])),
                value=draw(st.floats(min_value=1e-6, max_value=1e6)),
                tolerance=draw(st.floats(min_value=0, max_value=0.99)),
            )
        ),
        LatencySloPolicy(LatencySloParams(signal=signal, slo_seconds=draw(st.floats(min_value=1e-6, max_value=1e4)))),
        KvCachePolicy(KvCacheParams(signal=signal, target_utilisation=draw(st.floats(min_value=0.01, max_value=1.0)))),
    ]


any_sample = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(Sample.of),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda value: Sample(SampleKind.VALUE, value)),
    st.just(Sample(SampleKind.VALUE, None)),
    st.just(Sample.idle()),
    st.text(max_size=10).map(Sample.unknown),
)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), sample=any_sample, current=st.integers(min_value=0, max_value=10_000), ready=st.one_of(st.none(), st.integers(min_value=0, max_value=10_000)))
def test_policies_never_raise(data, sample: Sample, current: int, ready: int | None) -> None:
    for policy in make_policies(data.draw):
        context = PolicyContext(now=0.0, target="t", current_replicas=current, samples={policy.signals()[0]: sample}, ready_replicas=ready)

        desire = policy.evaluate(context).desire

        if sample.is_unknown:
            assert desire.kind is DesireKind.UNKNOWN
        if sample.is_idle:
            assert desire.kind is DesireKind.IDLE
        if desire.kind is DesireKind.REPLICAS:
            assert isinstance(desire.replicas, int)
            assert 0 <= desire.replicas <= 2**31 - 1
        value = sample.value
        if sample.is_value and (value is None or not math.isfinite(value) or value < 0):
            assert desire.kind is DesireKind.UNKNOWN


@settings(max_examples=100, deadline=None)
@given(data=st.data(), current=st.integers(min_value=0, max_value=100))
def test_missing_sample_is_unknown(data, current: int) -> None:
    for policy in make_policies(data.draw):
        context = PolicyContext(now=0.0, target="t", current_replicas=current, samples={})

        assert policy.evaluate(context).desire.kind is DesireKind.UNKNOWN


def test_reason_of_huge_value_stays_short():
    from policies.target import describe_ratio

    text = describe_ratio(1e300, 0.05, 2e301)
    assert text == "1e+300 > target 0.05 (ratio 2e+301)"
