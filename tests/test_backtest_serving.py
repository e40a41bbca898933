"""Validation of the backtest serving models against the profile they are built from."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.backtest.serving_events import EventServingModel
from autoscaler.backtest.serving_fluid import FluidServingModel
from autoscaler.backtest.signals import DECODE, PREFILL
from autoscaler.backtest.traces import Trace
from policies.profile import Profile, bundled_profile_dir


@pytest.fixture(scope="module")
def profile() -> Profile:
    return Profile.load(bundled_profile_dir())


def _trace(arrival, isl, osl) -> Trace:
    arrival = np.asarray(arrival, dtype=float)
    count = arrival.size
    return Trace(
        "test",
        arrival,
        np.broadcast_to(np.asarray(isl, dtype=np.int64), (count,)).copy(),
        np.broadcast_to(np.asarray(osl, dtype=np.int64), (count,)).copy(),
        float(arrival[-1]) if count else 1.0,
    )


def _poisson(rate: float, duration: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1 / rate, int(rate * duration * 1.2) + 10)
    times = np.cumsum(gaps)
    return times[times < duration]


def _run(model, until: float, interval: float = 15.0) -> None:
    time = interval
    while time <= until + 1e-9:
        model.advance(time)
        time += interval


def _model(profile, trace, *, prefill=1, decode=1, prefill_gpus=1.0, decode_gpus=1.0, horizon=None, cold_start=120.0):
    return EventServingModel(
        trace=trace, profile=profile, prefill_gpus=prefill_gpus, decode_gpus=decode_gpus,
        initial_prefill=prefill, initial_decode=decode, cold_start_s=cold_start,
        horizon_s=horizon if horizon is not None else trace.duration_s + 600,
    )


@pytest.mark.parametrize("isl", [500, 3151, 9000])
def test_low_load_ttft_matches_profile(profile, isl):
    trace = _trace(np.arange(0, 600, 10.0), isl, 50)
    model = _model(profile, trace)
    _run(model, 1200)
    ttft = model.outcome().ttft_s
    expected = profile.prefill_ttft_seconds(isl)
    assert np.all(np.abs(ttft / expected - 1) < 0.05)


@pytest.mark.parametrize(("isl", "osl"), [(300, 200), (3000, 400), (8000, 300)])
def test_low_load_itl_matches_profile(profile, isl, osl):
    trace = _trace(np.arange(0, 600, 30.0), isl, osl)
    model = _model(profile, trace)
    _run(model, 1200)
    itl = model.outcome().itl_s
    context = isl + osl / 2
    expected = profile.decode_itl_seconds(context / profile.max_kv_tokens, context)
    assert np.all(np.isfinite(itl))
    assert np.all(np.abs(itl / expected - 1) < 0.05)


def test_saturated_prefill_throughput_matches_profile(profile):
    isl = 3151
    trace = _trace(np.linspace(0, 300, 30000), isl, 2)
    model = _model(profile, trace, prefill=2, decode=4, decode_gpus=4.0, horizon=400)
    _run(model, 300)
    started = model.start[~np.isnan(model.start)]
    in_window = np.count_nonzero((started >= 100) & (started < 300))
    measured = in_window * isl / 200.0
    expected = 2 * profile.prefill_throughput_per_gpu(isl)
    assert measured == pytest.approx(expected, rel=0.05)


def test_saturated_decode_throughput_matches_profile(profile):
    isl, osl = 2900, 200
    trace = _trace(np.linspace(0, 600, 36000), isl, osl)
    model = _model(profile, trace, prefill=16, decode=1, horizon=700)
    _run(model, 600)
    recorder = model.recorder
    window = slice(300, 600)
    measured = recorder.itl[window].sum() / 300.0
    usage = float(np.mean(recorder.kv_usage[DECODE][window]))
    assert usage > 0.85
    assert recorder.waiting[DECODE][window].min() > 0
    expected = profile.decode_throughput_per_gpu(usage, isl + osl / 2)
    assert measured == pytest.approx(expected, rel=0.05)


def test_littles_law_prefill_queue(profile):
    isl = 3000
    service = profile.prefill_ttft_seconds(isl)
    rate = 0.85 * 2 / service
    arrival = _poisson(rate, 3600, seed=1)
    trace = _trace(arrival, isl, 2)
    model = _model(profile, trace, prefill=2, decode=2, horizon=3700)
    _run(model, 3690)
    wait = model.start - model.arrival
    assert not np.any(np.isnan(wait))
    measured_queue = float(np.mean(model.recorder.waiting[PREFILL][:3600]))
    expected_queue = len(arrival) / 3600 * float(np.mean(wait))
    assert measured_queue == pytest.approx(expected_queue, rel=0.05)


def test_littles_law_decode_pool(profile):
    arrival = _poisson(20, 3600, seed=2)
    trace = _trace(arrival, 1000, 150)
    model = _model(profile, trace, prefill=2, decode=1, horizon=3700)
    _run(model, 3700)
    duration = model.finish - model.first_token
    measured = float(np.mean(model.recorder.running[DECODE][60:3600]))
    mask = (model.first_token >= 60) & (model.first_token < 3600)
    expected = np.count_nonzero(mask) / 3540 * float(np.mean(duration[mask]))
    assert measured == pytest.approx(expected, rel=0.05)


def test_new_replica_serves_after_cold_start(profile):
    isl = 4000
    service = profile.prefill_ttft_seconds(isl)
    trace = _trace(np.linspace(0, 600, int(600 * 1.5 / service)), isl, 2)
    model = _model(profile, trace, prefill=1, decode=4, cold_start=120)
    _run(model, 90)
    model.scale(PREFILL, 2, 90)
    _run_until = 600
    time = 105
    while time <= _run_until:
        model.advance(time)
        time += 15
    starts = model.start[~np.isnan(model.start)]
    before = np.count_nonzero((starts >= 150) & (starts < 210)) / 60
    after = np.count_nonzero((starts >= 300) & (starts < 360)) / 60
    assert before == pytest.approx(1 / service, rel=0.05)
    # Both replicas now drain the backlog built up while the second one was starting.
    assert after == pytest.approx(2 / service, rel=0.05)
    assert model.prefill.replicas[1].ready_at == 210


def test_removed_decode_replica_drains(profile):
    trace = _trace(np.linspace(0, 300, 3000), 1000, 2000)
    model = _model(profile, trace, prefill=4, decode=2, horizon=1200)
    _run(model, 150)
    model.scale(DECODE, 1, 150)
    removed = model.decode.replicas[1]
    assert removed.draining
    assert removed.gone_at is None
    _run(model, 1200)
    assert removed.gone_at is not None
    assert removed.gone_at > 150
    assert model.pending == 0
    assert model.decode.live_count == 1


def test_cold_replica_removed_at_once(profile):
    trace = _trace(np.linspace(0, 100, 10), 100, 10)
    model = _model(profile, trace)
    model.scale(PREFILL, 3, 15)
    model.scale(PREFILL, 1, 30)
    assert [replica.gone_at for replica in model.prefill.replicas] == [None, 30, 30]
    assert model.gpu_seconds(100) == pytest.approx(100 + 30 + 100)


def test_fluid_matches_request_model_at_moderate_load(profile):
    arrival = _poisson(30, 1800, seed=4)
    rng = np.random.default_rng(5)
    trace = Trace("mix", arrival, rng.integers(200, 4000, arrival.size), rng.integers(20, 400, arrival.size), 1800.0)
    events = _model(profile, trace, prefill=2, decode=1, horizon=1800)
    _run(events, 1800)
    fluid = FluidServingModel(
        profile=profile, lengths=trace, trace=trace, duration_s=1800, prefill_gpus=1, decode_gpus=1,
        initial_prefill=2, initial_decode=1, cold_start_s=120, horizon_s=1800, ttft_slo_s=0.5, itl_slo_s=0.05,
    )
    _run(fluid, 1800)
    window = slice(300, 1800)
    event_tokens = events.recorder.itl[window].sum()
    fluid_steps = slice(300 // 15, 1800 // 15)
    fluid_tokens = fluid.recorder.itl[fluid_steps].sum()
    assert fluid_tokens == pytest.approx(event_tokens, rel=0.05)
    event_usage = np.nanmean(events.recorder.kv_usage[DECODE][window])
    fluid_usage = np.nanmean(fluid.recorder.kv_usage[DECODE][fluid_steps])
    assert fluid_usage == pytest.approx(event_usage, rel=0.15)
    assert fluid.attainment(0.5, 0.05)[1] == pytest.approx(events.attainment(0.5, 0.05)[1], abs=0.03)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 120), st.integers(1, 12000), st.integers(1, 600)), min_size=1, max_size=60),
    st.integers(1, 3),
    st.integers(1, 2),
)
def test_request_order_invariants(profile, requests, prefill, decode):
    requests.sort()
    arrival = np.array([request[0] for request in requests])
    trace = Trace("random", arrival, np.array([r[1] for r in requests]), np.array([r[2] for r in requests]), max(float(arrival[-1]), 1.0))
    model = _model(profile, trace, prefill=prefill, decode=decode, horizon=900)
    _run(model, 900)
    assert model.pending == 0
    assert np.all(model.start >= model.arrival)
    assert np.all(model.prefill_end >= model.start)
    assert np.all(model.first_token >= model.prefill_end - 1e-9)
    assert np.all(model.finish >= model.first_token)
    outcome = model.outcome()
    assert np.all(outcome.ttft_s >= model.service - 1e-9)
    assert np.all(outcome.itl_s[model.decode_tokens > 0] >= profile.decode_itl_ms.min() / 1000 * 0.99)
