"""`dynamo-compatible`: the Dynamo SLA planner's formulas, correction, interval and GPU budget."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from metrics.sample import Sample
from policies.base import DesireKind, PolicyContext
from policies.dynamo_compatible import (
    DynamoCompatibleParams,
    DynamoCompatiblePolicy,
    apply_dynamo_gpu_budget,
    dynamo_corrected_itl,
    dynamo_decode_replicas,
    dynamo_prefill_replicas,
    load_profile,
)

# The planner's worked case: I = 60 s, ISL 3000, OSL 150, 10 requests in the interval.
WORKED = {"request_rate": 10 / 60, "isl_mean": 3000.0, "osl_mean": 150.0}


def samples(**values) -> dict[str, Sample]:
    result = {}
    for name, value in values.items():
        result[name] = value if isinstance(value, Sample) else Sample.of(value)
    return result


def evaluate(policy, *, now=0.0, current=1, state=None, **values):
    context = PolicyContext(now=now, target="llm/pclq/pcs-0-decode", current_replicas=current, samples=samples(**values), state=state or {})
    result = policy.evaluate(context)
    json.dumps(result.state)
    return result


@pytest.mark.parametrize(
    "case, num_req, isl, interval, p_correction, throughput, gpus, min_endpoint, expected",
    [
        ("worked case", 10, 3000, 60, 1.0, 40_000, 1, 1, 1),
        ("three quarters of one engine", 600, 3000, 60, 1.0, 40_000, 1, 1, 1),
        ("one and a quarter engines", 1000, 3000, 60, 1.0, 40_000, 1, 1, 2),
        ("correction below 1 shrinks", 1000, 3000, 60, 0.5, 40_000, 1, 1, 1),
        ("correction above 1 ignored", 1000, 3000, 60, 2.0, 40_000, 1, 1, 2),
        ("two GPUs per engine", 1000, 3000, 60, 1.0, 40_000, 2, 1, 1),
        ("min_endpoint raises", 10, 3000, 60, 1.0, 40_000, 1, 2, 2),
        ("no requests gives min_endpoint", 0, 3000, 60, 1.0, 40_000, 1, 1, 1),
        ("default interval", 18_000, 4000, 180, 1.0, 40_000, 1, 1, 10),
        ("exact multiple is not rounded up", 1200, 2000, 60, 1.0, 40_000, 1, 1, 1),
    ],
)
def test_prefill_formula(case, num_req, isl, interval, p_correction, throughput, gpus, min_endpoint, expected):
    replicas = dynamo_prefill_replicas(
        num_req=num_req,
        isl=isl,
        interval_seconds=interval,
        p_correction=p_correction,
        throughput_per_gpu=throughput,
        gpus_per_engine=gpus,
        min_endpoint=min_endpoint,
    )

    assert replicas == expected, case


@pytest.mark.parametrize(
    "case, num_req, osl, interval, throughput, gpus, min_endpoint, expected",
    [
        ("worked case", 10, 150, 60, 10_000, 1, 1, 1),
        ("four engines and a bit", 16_100, 150, 60, 10_000, 1, 1, 5),
        ("two GPUs per engine", 16_100, 150, 60, 10_000, 2, 1, 3),
        ("min_endpoint raises", 10, 150, 60, 10_000, 1, 3, 3),
        ("min_endpoint 0 allows 0", 0, 150, 60, 10_000, 1, 0, 0),
    ],
)
def test_decode_formula(case, num_req, osl, interval, throughput, gpus, min_endpoint, expected):
    replicas = dynamo_decode_replicas(
        num_req=num_req,
        osl=osl,
        interval_seconds=interval,
        throughput_per_gpu=throughput,
        gpus_per_engine=gpus,
        min_endpoint=min_endpoint,
    )

    assert replicas == expected, case


@pytest.mark.parametrize(
    "d_correction, expected",
    [(1.0, 0.05), (2.0, 0.025), (0.5, 0.1), (0.0, 0.05), (-1.0, 0.05)],
)
def test_corrected_itl(d_correction, expected):
    assert dynamo_corrected_itl(0.05, d_correction) == pytest.approx(expected)


@pytest.mark.parametrize(
    "case, prefill, decode, prefill_gpus, decode_gpus, budget, min_endpoint, expected",
    [
        ("worked case fits", 1, 1, 1, 1, 8, 1, (1, 1)),
        ("exactly the budget", 4, 4, 1, 1, 8, 1, (4, 4)),
        ("both halved", 10, 10, 1, 1, 8, 1, (4, 4)),
        ("prefill floored to min_endpoint", 1, 20, 1, 1, 8, 1, (1, 7)),
        ("prefill capped to leave decode room", 20, 1, 1, 1, 8, 1, (7, 1)),
        ("two-GPU prefill", 6, 2, 2, 1, 8, 1, (3, 2)),
        ("four-GPU engines", 3, 1, 4, 4, 8, 1, (1, 1)),
        ("budget below min_endpoint", 3, 3, 2, 2, 3, 1, (0, 0)),
        ("negative budget disables", 30, 30, 1, 1, -1, 1, (30, 30)),
        ("min_endpoint 2", 10, 10, 1, 1, 8, 2, (4, 4)),
    ],
)
def test_gpu_budget(case, prefill, decode, prefill_gpus, decode_gpus, budget, min_endpoint, expected):
    result = apply_dynamo_gpu_budget(prefill, decode, prefill_gpus, decode_gpus, budget, min_endpoint)

    assert result == expected, case


def test_gpu_budget_rejects_zero_gpus():
    with pytest.raises(ValueError, match="prefill_gpus"):
        apply_dynamo_gpu_budget(1, 1, 0, 1, 8, 1)


@settings(max_examples=200, deadline=None)
@given(
    prefill=st.integers(0, 200),
    decode=st.integers(0, 200),
    prefill_gpus=st.integers(1, 8),
    decode_gpus=st.integers(1, 8),
    budget=st.integers(0, 400),
    min_endpoint=st.integers(0, 3),
)
def test_gpu_budget_never_exceeded(prefill, decode, prefill_gpus, decode_gpus, budget, min_endpoint):
    p, d = apply_dynamo_gpu_budget(prefill, decode, prefill_gpus, decode_gpus, budget, min_endpoint)

    required = prefill * prefill_gpus + decode * decode_gpus
    if required <= budget:
        assert (p, d) == (prefill, decode)
    elif budget < min_endpoint * (prefill_gpus + decode_gpus):
        assert (p, d) == (0, 0)
    else:
        assert p * prefill_gpus + d * decode_gpus <= budget
        assert p >= min_endpoint
        assert d >= min_endpoint


# --- The policy with the bundled H200 profile -----------------------------------------------


@pytest.fixture(scope="module")
def profile():
    return load_profile(None)


def test_worked_case_real_profile(profile):
    prefill = DynamoCompatiblePolicy(DynamoCompatibleParams(role="prefill", adjustment_interval_seconds=60))
    decode = DynamoCompatiblePolicy(DynamoCompatibleParams(role="decode", adjustment_interval_seconds=60))

    p = evaluate(prefill, ttft_mean=0.5, **WORKED).desire
    d = evaluate(decode, itl_mean=0.01, requests_running=3, **WORKED).desire

    assert (p.kind, p.replicas) == (DesireKind.REPLICAS, 1)
    assert (d.kind, d.replicas) == (DesireKind.REPLICAS, 1)
    assert apply_dynamo_gpu_budget(p.replicas, d.replicas, 1, 1, 8, 1) == (1, 1)


def test_prefill_matches_formula_with_profile(profile):
    policy = DynamoCompatiblePolicy(DynamoCompatibleParams(role="prefill"))
    rate, isl, ttft = 40.0, 3000.0, 0.03

    desire = evaluate(policy, request_rate=rate, isl_mean=isl, ttft_mean=ttft).desire

    p_correction = ttft / profile.prefill_ttft_seconds(isl)
    expected = math.ceil(rate * 180 * isl / 180 * min(1, p_correction) / profile.prefill_throughput_per_gpu(isl))
    assert p_correction < 1
    assert desire.replicas == expected
    assert desire.replicas == 2


def test_decode_matches_formula_with_profile(profile):
    policy = DynamoCompatiblePolicy(DynamoCompatibleParams(role="decode"))
    rate, isl, osl, itl, running, current = 60.0, 3000.0, 150.0, 0.03, 200.0, 2

    desire = evaluate(
        policy, current=current, request_rate=rate, isl_mean=isl, osl_mean=osl, itl_mean=itl, requests_running=running
    ).desire

    context = isl + osl / 2
    kv_usage = running / current * context / profile.max_kv_tokens
    d_correction = itl / profile.decode_itl_seconds(kv_usage, context)
    throughput, _ = profile.best_decode_throughput_per_gpu(0.05 / d_correction, context)
    assert desire.replicas == math.ceil(rate * osl / throughput)


def test_decode_correction_disabled(profile):
    policy = DynamoCompatiblePolicy(DynamoCompatibleParams(role="decode", correction=False))

    desire = evaluate(policy, request_rate=60.0, isl_mean=3000.0, osl_mean=150.0, itl_mean=0.5, requests_running=10).desire

    throughput, _ = profile.best_decode_throughput_per_gpu(0.05, 3075)
    assert desire.replicas == math.ceil(60 * 150 / throughput)


def test_holds_answer_between_adjustments():
    policy = DynamoCompatiblePolicy(DynamoCompatibleParams(role="prefill"))
    first = evaluate(policy, now=0, request_rate=40.0, isl_mean=3000.0, ttft_mean=0.06)

    before_interval = evaluate(policy, now=179, state=first.state, request_rate=400.0, isl_mean=3000.0, ttft_mean=0.06)
    adjusted = evaluate(policy, now=180, state=before_interval.state, request_rate=400.0, isl_mean=3000.0, ttft_mean=0.06)

    assert first.desire.replicas == 3
    assert before_interval.desire.replicas == 3
    assert "hold until the next adjustment" in before_interval.desire.reason
    assert adjusted.desire.replicas == 25


def test_unknown_rate_retries_next_tick():
    policy = DynamoCompatiblePolicy(DynamoCompatibleParams(role="prefill"))
    failed = evaluate(policy, now=0, request_rate=Sample.unknown("query timed out"), isl_mean=3000.0, ttft_mean=0.06)

    retried = evaluate(policy, now=15, state=failed.state, request_rate=40.0, isl_mean=3000.0, ttft_mean=0.06)

    assert failed.desire.kind is DesireKind.UNKNOWN
    assert retried.desire.replicas == 3


@pytest.mark.parametrize("rate", [Sample.idle(), Sample.of(0.0)])
def test_idle_window_goes_idle(rate):
    policy = DynamoCompatiblePolicy(DynamoCompatibleParams(role="decode"))

    desire = evaluate(policy, request_rate=rate, isl_mean=Sample.idle(), osl_mean=Sample.idle(), itl_mean=Sample.idle(), requests_running=0).desire

    assert desire.kind is DesireKind.IDLE


def test_missing_isl_with_traffic_is_unknown():
    policy = DynamoCompatiblePolicy(DynamoCompatibleParams(role="prefill"))

    desire = evaluate(policy, request_rate=5.0, isl_mean=Sample.idle(), ttft_mean=Sample.idle()).desire

    assert desire.kind is DesireKind.UNKNOWN


def test_predictor_uses_interval_step():
    policy = DynamoCompatiblePolicy(
        DynamoCompatibleParams.model_validate({"role": "prefill", "predictor": {"kind": "kalman"}, "adjustment_interval_seconds": 60})
    )

    assert policy.predictor_config.step_seconds == 60


def test_signals_by_role():
    prefill = DynamoCompatiblePolicy(DynamoCompatibleParams(role="prefill"))
    decode = DynamoCompatiblePolicy(DynamoCompatibleParams(role="decode"))

    assert prefill.signals() == ["request_rate", "isl_mean", "ttft_mean"]
    assert decode.signals() == ["request_rate", "isl_mean", "osl_mean", "itl_mean", "requests_running"]


@pytest.mark.parametrize(
    "data, field",
    [
        ({"role": "router"}, "role"),
        ({"role": "decode", "adjustment_interval_seconds": 0}, "adjustment_interval_seconds"),
        ({"role": "decode", "gpus_per_engine": 0}, "gpus_per_engine"),
        ({"role": "decode", "max_gpu_budget": 8}, "max_gpu_budget"),
    ],
)
def test_invalid_params_name_field(data, field):
    with pytest.raises(ValidationError, match=field):
        DynamoCompatibleParams.model_validate(data)


maybe_value = st.one_of(
    st.floats(min_value=0, max_value=1e5, allow_nan=False),
    st.just(Sample.idle()),
    st.just(Sample.unknown("query failed")),
)


@settings(max_examples=80, deadline=None)
@given(
    role=st.sampled_from(["prefill", "decode"]),
    current=st.integers(0, 50),
    rate=maybe_value,
    isl=maybe_value,
    osl=maybe_value,
    latency=maybe_value,
    running=maybe_value,
)
def test_property_never_raises(role, current, rate, isl, osl, latency, running):
    policy = DynamoCompatiblePolicy(DynamoCompatibleParams(role=role))
    values = {"request_rate": rate, "isl_mean": isl, "osl_mean": osl, "ttft_mean": latency, "itl_mean": latency, "requests_running": running}
    chosen = {name: values[name] for name in policy.signals()}

    desire = evaluate(policy, current=current, **chosen).desire

    if isinstance(rate, Sample) and rate.is_unknown:
        assert desire.kind is DesireKind.UNKNOWN
    if desire.kind is DesireKind.REPLICAS:
        assert desire.replicas >= 1


def test_concurrency_signal_configurable():
    policy = DynamoCompatiblePolicy(DynamoCompatibleParams(role="decode", concurrency_signal="requests_inflight"))

    desire = evaluate(policy, request_rate=60.0, isl_mean=3000.0, osl_mean=150.0, itl_mean=0.01, requests_inflight=10.0).desire

    assert policy.signals()[-1] == "requests_inflight"
    assert desire.kind is DesireKind.REPLICAS


def test_unknown_input_blocks_held_scale_down():
    policy = DynamoCompatiblePolicy(DynamoCompatibleParams(role="prefill"))
    first = evaluate(policy, now=0, current=5, request_rate=40.0, isl_mean=3000.0, ttft_mean=0.06)

    second = evaluate(policy, now=15, current=5, state=first.state, request_rate=40.0, isl_mean=3000.0, ttft_mean=Sample.unknown("timed out"))

    assert first.desire.replicas == 3
    assert second.desire.kind is DesireKind.UNKNOWN
