"""`sla-planner`: sizing for the TTFT and ITL objectives, queueing, hysteresis and missing data."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from metrics.sample import Sample
from policies.base import DesireKind, PolicyContext
from policies.dynamo_compatible import load_profile
from policies.sla_planner import SlaPlannerParams, SlaPlannerPolicy

ISL = 3000.0
OSL = 150.0
CONTEXT = ISL + OSL / 2

# Constant forecaster, unsmoothed correction and no warm-up make each tick's desire depend on its
# samples only.
DETERMINISTIC = {"forecaster": {"kind": "constant"}, "correction_smoothing": 1.0, "warmup_seconds": 0}


@pytest.fixture(scope="module")
def profile():
    return load_profile(None)


def planner(role: str, **params) -> SlaPlannerPolicy:
    return SlaPlannerPolicy(SlaPlannerParams.model_validate({"role": role, **DETERMINISTIC, **params}))


def prefill_samples(profile, rate, *, waiting=0.0, running=4.0, queue_p90=0.01, queue_mean=0.0, isl=ISL, **overrides):
    """Samples of a prefill target whose service time matches the profile (p_corr 1)."""
    values = {
        "request_rate": rate,
        "isl_mean": isl,
        "ttft_mean": profile.prefill_ttft_seconds(ISL) + (queue_mean if isinstance(queue_mean, float) else 0.0),
        "queue_time_mean": queue_mean,
        "queue_time_p90": queue_p90,
        "requests_waiting": waiting,
        "requests_running": running,
    }
    values.update(overrides)
    return values


def decode_samples(profile, rate, current, *, running=40.0, waiting=0.0, d_correction=1.0, **overrides):
    """Samples of a decode target whose ITL is `d_correction` times the profiled ITL."""
    kv_usage = running / max(current, 1) * CONTEXT / profile.max_kv_tokens
    values = {
        "request_rate": rate,
        "isl_mean": ISL,
        "osl_mean": OSL,
        "itl_mean": d_correction * profile.decode_itl_seconds(kv_usage, CONTEXT),
        "decode_throughput": rate * OSL,
        "queue_time_p90": 0.0,
        "requests_waiting": waiting,
        "requests_running": running,
    }
    values.update(overrides)
    return values


def evaluate(policy, values, *, current, now=0.0, state=None, ready=None):
    samples = {name: value if isinstance(value, Sample) else Sample.of(value) for name, value in values.items()}
    context = PolicyContext(
        now=now, target="llm/pclq/pcs-0-prefill", current_replicas=current, samples=samples, state=state or {}, ready_replicas=ready
    )
    result = policy.evaluate(context)
    json.dumps(result.state)
    return result


# Prefill capacity at ISL 3000 on the bundled profile is 49,481 tokens/s per replica, and the
# service time is 60.5 ms. The TTFT budget of 500 ms then allows utilisation 0.94, capped at
# 0.9. That is 44,533 tokens/s per replica to scale up, and 40,080 to keep after a scale-down.
@pytest.mark.parametrize(
    "case, rate, current, extra, expected",
    [
        ("steady load keeps", 40, 3, {}, 3),
        ("rate up", 100, 3, {}, 7),
        ("rate down with headroom", 20, 3, {}, 2),
        ("inside the band keeps N", 42, 4, {}, 4),
        ("inside the band keeps N-1", 42, 3, {}, 3),
        ("from zero replicas", 40, 0, {}, 3),
        ("low load keeps one", 0.5, 2, {}, 1),
        ("backlog adds drain capacity", 40, 3, {"waiting": 3000, "queue_p90": 0.3}, 6),
        ("queueing beyond budget adds one", 40, 3, {"waiting": 50, "queue_p90": 2.0}, 4),
        ("queueing blocks scale-down", 20, 3, {"waiting": 10, "queue_p90": 1.0}, 4),
    ],
)
def test_prefill_table(profile, case, rate, current, extra, expected):
    policy = planner("prefill")

    desire = evaluate(policy, prefill_samples(profile, rate, **extra), current=current).desire

    assert desire.kind is DesireKind.REPLICAS, (case, desire.reason)
    assert desire.replicas == expected, (case, desire.reason)


# Decode at context 3075 with ITL 50 ms: the profile's best cell gives 6,795 output tokens/s
# per replica, 6,115 after the 10 % scale-down headroom.
@pytest.mark.parametrize(
    "case, rate, current, extra, expected",
    [
        ("steady load keeps", 60, 2, {}, 2),
        ("rate up", 100, 2, {}, 3),
        ("rate down", 60, 4, {}, 2),
        ("band keeps", 80, 2, {}, 2),
        ("waiting backlog drains", 60, 2, {"waiting": 2000}, 3),
    ],
)
def test_decode_table(profile, case, rate, current, extra, expected):
    policy = planner("decode")

    desire = evaluate(policy, decode_samples(profile, rate, current, **extra), current=current).desire

    assert desire.kind is DesireKind.REPLICAS, (case, desire.reason)
    assert desire.replicas == expected, (case, desire.reason)


def test_decode_correction_tightens_itl(profile):
    policy = planner("decode")
    rate = 200.0

    desire = evaluate(policy, decode_samples(profile, rate, 5, d_correction=8.0), current=5).desire

    # d_corr is clamped to 4, so the ITL target is 12.5 ms.
    throughput, _ = profile.best_decode_throughput_per_gpu(0.05 / 4, CONTEXT)
    assert desire.replicas == math.ceil(rate * OSL / throughput)
    assert desire.replicas > math.ceil(rate * OSL / profile.best_decode_throughput_per_gpu(0.05, CONTEXT)[0])


def test_prefill_correction_uses_service_time(profile):
    policy = planner("prefill")
    slow = prefill_samples(profile, 40, ttft_mean=2 * profile.prefill_ttft_seconds(ISL) + 0.2, queue_mean=0.2)

    desire = evaluate(policy, slow, current=3).desire

    # Service twice the profile: capacity halves to 24,741 tokens/s and S = 121 ms.
    service = 2 * profile.prefill_ttft_seconds(ISL)
    utilisation = min(0.9, 2 * (0.5 - service) / (1.0 - service))
    assert desire.replicas == math.ceil(40 * ISL / (profile.prefill_throughput_per_gpu(ISL) / 2 * utilisation))
    assert desire.replicas == 6


def test_correction_smoothed_over_ticks(profile):
    policy = SlaPlannerPolicy(SlaPlannerParams(role="prefill", forecaster={"kind": "constant"}, correction_smoothing=0.5))
    slow = prefill_samples(profile, 40, ttft_mean=3 * profile.prefill_ttft_seconds(ISL))

    first = evaluate(policy, slow, current=3)
    second = evaluate(policy, slow, current=3, now=15, state=first.state)

    assert first.state["p_correction"] == pytest.approx(2.0)
    assert second.state["p_correction"] == pytest.approx(2.5)


def test_infeasible_ttft_reported(profile):
    policy = planner("prefill", ttft_slo_seconds=0.05)

    desire = evaluate(policy, prefill_samples(profile, 40), current=3).desire

    assert desire.replicas == 3
    assert "cannot be met by scaling" in desire.reason


def test_forecast_scales_ahead_of_ramp(profile):
    policy = SlaPlannerPolicy(
        SlaPlannerParams(role="prefill", forecaster={"kind": "kalman"}, cold_start_seconds=300, correction_smoothing=1.0)
    )
    state: dict = {}
    desire = None
    for minute in range(20):
        rate = 10.0 + 5.0 * minute
        result = evaluate(policy, prefill_samples(profile, rate), current=3, now=minute * 60.0 + 30, state=state)
        state = result.state
        desire = result.desire

    # The rate is 105/s now and 130/s five minutes on: 130 * 3000 / 44,533 = 8.8.
    assert desire.replicas == 9
    assert "forecast 130/s" in desire.reason


def test_forecast_never_below_observed(profile):
    policy = SlaPlannerPolicy(SlaPlannerParams(role="prefill", forecaster={"kind": "kalman"}, correction_smoothing=1.0))
    state: dict = {}
    for minute in range(10):
        rate = 200.0 - 15.0 * minute
        result = evaluate(policy, prefill_samples(profile, rate), current=10, now=minute * 60.0 + 30, state=state)
        state = result.state

    # The forecast falls below the observed 65/s, so the observed rate is sized for.
    assert result.desire.replicas == math.ceil(65 * ISL / (profile.prefill_throughput_per_gpu(ISL) * 0.9 * 0.9))


# --- Field failures --------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [Sample.idle(), Sample.of(0.0)])
def test_idle_window_goes_to_floor(profile, rate):
    policy = planner("prefill")
    values = prefill_samples(profile, rate, ttft_mean=Sample.idle(), queue_mean=Sample.idle(), queue_p90=Sample.idle(), isl=Sample.idle(), running=0.0)

    desire = evaluate(policy, values, current=4).desire

    assert desire.kind is DesireKind.IDLE


def test_failed_rate_read_is_unknown_not_zero(profile):
    policy = planner("decode")
    values = decode_samples(profile, 60, 4, request_rate=Sample.unknown("query timed out"))

    desire = evaluate(policy, values, current=4).desire

    assert desire.kind is DesireKind.UNKNOWN


def test_unknown_queue_blocks_scale_down(profile):
    policy = planner("prefill")

    desire = evaluate(policy, prefill_samples(profile, 20, queue_p90=Sample.unknown("no series")), current=5).desire

    assert desire.kind is DesireKind.UNKNOWN
    assert "queue_time_p90" in desire.reason


def test_unknown_queue_allows_scale_up(profile):
    policy = planner("prefill")

    desire = evaluate(policy, prefill_samples(profile, 100, queue_p90=Sample.unknown("no series")), current=3).desire

    assert desire.replicas == 7


def test_idle_isl_reuses_last_value(profile):
    policy = planner("prefill")
    first = evaluate(policy, prefill_samples(profile, 40), current=3)

    second = evaluate(policy, prefill_samples(profile, 40, isl=Sample.idle()), current=3, now=15, state=first.state)

    assert second.desire.replicas == 3


def test_idle_isl_without_history_is_unknown(profile):
    policy = planner("prefill")

    desire = evaluate(policy, prefill_samples(profile, 40, isl=Sample.idle()), current=3).desire

    assert desire.kind is DesireKind.UNKNOWN


def test_requests_in_flight_hold_replicas(profile):
    policy = planner("decode")
    values = decode_samples(profile, 0.0, 3, running=12.0)

    desire = evaluate(policy, values, current=3).desire

    assert desire.replicas == 3


def test_stuck_queue_stops_holding(profile):
    policy = planner("decode", stuck_seconds=120)
    values = decode_samples(profile, 0.0, 3, running=0.0, waiting=7.0, decode_throughput=0.0)

    state: dict = {}
    kinds = []
    for tick in range(12):
        result = evaluate(policy, values, current=3, now=tick * 15.0, state=state)
        state = result.state
        kinds.append(result.desire.kind)

    assert kinds[0] is DesireKind.REPLICAS
    assert kinds[7] is DesireKind.REPLICAS
    assert kinds[8] is DesireKind.IDLE
    assert kinds[-1] is DesireKind.IDLE


def test_no_flapping_around_boundary(profile):
    # Load wanders +-4 % around 2.7 replicas' worth; replicas are applied as desired each tick.
    policy = planner("prefill")
    current = 3
    counts = []
    for tick in range(40):
        rate = 40.0 * (1 + 0.04 * math.sin(tick))
        current = evaluate(policy, prefill_samples(profile, rate), current=current, now=tick * 15.0).desire.replicas
        counts.append(current)

    assert set(counts) == {3}


def test_invalid_params_name_field():
    with pytest.raises(ValidationError, match="cold_start_seconds"):
        SlaPlannerParams.model_validate({"role": "prefill", "cold_start_seconds": -5})
    with pytest.raises(ValidationError, match="forecaster"):
        SlaPlannerParams.model_validate({"role": "prefill", "forecaster": {"kind": "prophet"}})


def test_signals_by_role():
    assert planner("prefill").signals() == [
        "request_rate",
        "isl_mean",
        "ttft_mean",
        "queue_time_mean",
        "queue_time_p90",
        "requests_waiting",
        "requests_running",
    ]
    assert "decode_throughput" in planner("decode").signals()


maybe_value = st.one_of(
    st.floats(min_value=0, max_value=1e5, allow_nan=False),
    st.just(Sample.idle()),
    st.just(Sample.unknown("query failed")),
)


@settings(max_examples=80, deadline=None)
@given(
    role=st.sampled_from(["prefill", "decode"]),
    current=st.integers(0, 40),
    values=st.fixed_dictionaries(
        {
            name: maybe_value
            for name in (
                "request_rate",
                "isl_mean",
                "osl_mean",
                "ttft_mean",
                "itl_mean",
                "queue_time_mean",
                "queue_time_p90",
                "requests_waiting",
                "requests_running",
                "decode_throughput",
            )
        }
    ),
)
def test_property_unknown_never_scales_down(role, current, values):
    policy = SlaPlannerPolicy(SlaPlannerParams(role=role))
    chosen = {name: values[name] for name in policy.signals()}

    desire = evaluate(policy, chosen, current=current).desire

    unknown = [name for name, value in chosen.items() if isinstance(value, Sample) and value.is_unknown]
    if isinstance(chosen["request_rate"], Sample) and chosen["request_rate"].is_unknown:
        assert desire.kind is DesireKind.UNKNOWN
    if desire.kind is DesireKind.REPLICAS:
        assert desire.replicas >= 0
        if unknown:
            assert desire.replicas >= current
    if unknown:
        assert desire.kind is not DesireKind.IDLE


def test_dynamo_preset_signals(profile):
    # The dynamo preset has no queue-time histogram and counts in-flight requests instead.
    policy = planner("prefill", queue_time_signal=None, queue_time_mean_signal=None, running_signal="requests_inflight")
    values = prefill_samples(profile, 20, requests_inflight=4.0)
    for name in ("queue_time_p90", "queue_time_mean", "requests_running"):
        values.pop(name)

    desire = evaluate(policy, values, current=3).desire

    assert policy.signals() == ["request_rate", "isl_mean", "ttft_mean", "requests_waiting", "requests_inflight"]
    assert desire.replicas == 2


def test_utilisation_range_rejected():
    with pytest.raises(ValidationError, match="min_utilisation 0.8 is above max_utilisation 0.6"):
        SlaPlannerParams.model_validate({"role": "prefill", "min_utilisation": 0.8, "max_utilisation": 0.6})
    assert SlaPlannerParams.model_validate({"role": "prefill", "max_utilisation": 0.2}).max_utilisation == 0.2


def test_invalid_signal_name_rejected():
    with pytest.raises(ValidationError, match="running_signal"):
        SlaPlannerParams.model_validate({"role": "decode", "running_signal": "requests running"})


# --- Starting replicas, warm-up and rounding -------------------------------------------------


@pytest.mark.parametrize(
    "case, current, ready, expected",
    [
        ("all ready adds one", 3, 3, 4),
        ("one starting waits for it", 4, 3, 4),
        ("readiness unknown adds one", 3, None, 4),
    ],
)
def test_queueing_counts_starting_replicas(profile, case, current, ready, expected):
    policy = planner("prefill")
    values = prefill_samples(profile, 40, waiting=50, queue_p90=2.0)

    desire = evaluate(policy, values, current=current, ready=ready).desire

    assert desire.replicas == expected, (case, desire.reason)


def test_starting_replica_named_in_reason(profile):
    policy = planner("prefill")

    desire = evaluate(policy, prefill_samples(profile, 40, waiting=50, queue_p90=2.0), current=4, ready=3).desire

    assert "1 replica(s) still starting" in desire.reason


def test_rounding_below_zero_queue_time_is_zero(profile):
    # A mean computed as TTFT minus service time can come out at -2e-15 s when nothing queued.
    policy = planner("prefill")

    desire = evaluate(policy, prefill_samples(profile, 20, queue_mean=-2e-15), current=3).desire

    assert desire.kind is DesireKind.REPLICAS, desire.reason
    assert desire.replicas == 2


def test_clearly_negative_queue_time_is_unknown(profile):
    policy = planner("prefill")

    desire = evaluate(policy, prefill_samples(profile, 20, queue_mean=-0.01), current=3).desire

    assert desire.kind is DesireKind.UNKNOWN
    assert "queue_time_mean" in desire.reason


@pytest.mark.parametrize(
    "case, now, expected",
    [
        ("first tick keeps", 0.0, 3),
        ("inside the warm-up keeps", 105.0, 3),
        ("after the warm-up scales down", 120.0, 2),
    ],
)
def test_warmup_holds_scale_down(profile, case, now, expected):
    policy = planner("prefill", warmup_seconds=None)
    first = evaluate(policy, prefill_samples(profile, 20), current=3, now=0.0)

    desire = evaluate(policy, prefill_samples(profile, 20), current=3, now=now, state=first.state).desire

    assert desire.replicas == expected, (case, desire.reason)


def test_warmup_allows_scale_up(profile):
    policy = planner("prefill", warmup_seconds=None)

    desire = evaluate(policy, prefill_samples(profile, 100), current=3).desire

    assert desire.replicas == 7


# --- Utilisation limit from the TTFT quantile ------------------------------------------------

# ISL 3000 gives 49,481 tokens/s per replica and a queue-model utilisation of 0.94, capped at
# max_utilisation 0.9. At 40/s and 3 replicas the observed utilisation is 120,000 / 148,443 = 0.81.
QUANTILE = {"ttft_quantile_signal": "ttft_p99", "stable_seconds": 60}


@pytest.mark.parametrize(
    "case, ttft_p99, ready_since, expected_limit, expected_replicas",
    [
        ("quantile met near the limit recovers", 0.3, -60.0, 0.9, 3),
        ("quantile within tolerance keeps", 0.54, -60.0, 0.9, 3),
        ("quantile missed lowers to 95 % of observed", 0.9, -60.0, 0.77, 4),
        ("ready count changed recently ignores it", 0.9, -30.0, 0.9, 3),
    ],
)
def test_utilisation_limit_table(profile, case, ttft_p99, ready_since, expected_limit, expected_replicas):
    policy = planner("prefill", **QUANTILE)
    state = {"u_limit": 0.9, "ready_count": 3, "ready_since": ready_since}

    result = evaluate(policy, prefill_samples(profile, 40, ttft_p99=ttft_p99), current=3, ready=3, state=state)

    assert result.state["u_limit"] == pytest.approx(expected_limit, abs=0.005), (case, result.desire.reason)
    assert result.desire.replicas == expected_replicas, (case, result.desire.reason)


def test_utilisation_limit_recovers_per_tick(profile):
    policy = planner("prefill", max_utilisation=0.9, **QUANTILE)
    state = {"u_limit": 0.8, "ready_count": 3, "ready_since": -60.0}

    result = evaluate(policy, prefill_samples(profile, 40, ttft_p99=0.3), current=3, ready=3, state=state)

    assert result.state["u_limit"] == pytest.approx(0.81)


def test_utilisation_limit_floor(profile):
    policy = planner("prefill", min_utilisation=0.5, **QUANTILE)
    state = {"u_limit": 0.9, "ready_count": 10, "ready_since": -60.0}

    # 40/s over 10 replicas is utilisation 0.24; the limit stops at min_utilisation.
    result = evaluate(policy, prefill_samples(profile, 40, ttft_p99=2.0), current=10, ready=10, state=state)

    assert result.state["u_limit"] == pytest.approx(0.5)
    assert "ttft_p99 2000 ms > objective" in result.desire.reason


def test_utilisation_limit_reads_quantile_signal(profile):
    policy = planner("prefill", **QUANTILE)

    assert "ttft_p99" in policy.signals()
    assert "ttft_p99" not in planner("prefill").signals()


def test_unknown_quantile_blocks_scale_down(profile):
    policy = planner("prefill", **QUANTILE)

    desire = evaluate(policy, prefill_samples(profile, 20, ttft_p99=Sample.unknown("no series")), current=5).desire

    assert desire.kind is DesireKind.UNKNOWN
    assert "ttft_p99" in desire.reason


@settings(max_examples=60, deadline=None)
@given(
    ticks=st.lists(
        st.tuples(st.floats(0.1, 300), st.floats(0, 5), st.integers(1, 12)),
        min_size=1,
        max_size=25,
    )
)
def test_property_utilisation_limit_bounded(ticks):
    profile = load_profile(None)
    policy = planner("prefill", min_utilisation=0.3, max_utilisation=0.8, **QUANTILE)
    state: dict = {}
    for index, (rate, ttft_p99, ready) in enumerate(ticks):
        result = evaluate(policy, prefill_samples(profile, rate, ttft_p99=ttft_p99), current=ready, ready=ready, now=index * 15.0, state=state)
        state = dict(result.state)

        assert 0.3 <= state["u_limit"] <= 0.8
        assert result.desire.kind is DesireKind.REPLICAS
        assert result.desire.replicas >= 1
