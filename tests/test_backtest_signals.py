"""Prometheus-style signals of the backtest: buckets, histogram_quantile, windows, idle vs value."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.backtest.signals import (
    DECODE,
    ITL_BUCKETS,
    PREFILL,
    TTFT_BUCKETS,
    SignalRecorder,
    bucket_counts,
    histogram_quantile,
    histogram_quantile_rows,
    log_buckets,
)


def test_dynamo_default_buckets():
    assert TTFT_BUCKETS[0] == 0.0
    assert TTFT_BUCKETS[1] == 0.0022
    assert TTFT_BUCKETS[-1] == 480.0
    assert TTFT_BUCKETS.size == 18
    assert ITL_BUCKETS[-1] == 2.0
    assert ITL_BUCKETS.size == 13
    assert np.all(np.diff(TTFT_BUCKETS) > 0)


def test_log_buckets_round_to_two_figures():
    # As in Dynamo, the log-spaced values start one step above the minimum.
    assert log_buckets(1.0, 100.0, 3).tolist() == [0.0, 10.0, 100.0]
    assert log_buckets(0.001, 2.0, 13).tolist()[:4] == [0.0, 0.0019, 0.0035, 0.0067]


BOUNDS = np.array([0.1, 0.5, 1.0])


@pytest.mark.parametrize(
    ("name", "quantile", "counts", "expected"),
    [
        ("all in first bucket", 0.5, [10, 0, 0, 0], 0.05),
        ("interpolate second bucket", 0.75, [5, 10, 0, 0], 0.35),
        ("rank in +Inf bucket returns last bound", 0.99, [1, 1, 1, 10], 1.0),
        ("upper edge of a bucket", 0.5, [5, 5, 0, 0], 0.1),
        ("median of uniform buckets", 0.5, [0, 4, 4, 0], 0.5),
    ],
)
def test_histogram_quantile_table(name, quantile, counts, expected):
    assert histogram_quantile(quantile, BOUNDS, np.array(counts, dtype=float)) == pytest.approx(expected), name


def test_histogram_quantile_empty_is_nan():
    assert math.isnan(histogram_quantile(0.9, BOUNDS, np.zeros(4)))


def test_bucket_counts_le_semantics():
    counts = bucket_counts(np.array([0.1, 0.1000001, 2.0, 0.0]), BOUNDS)
    assert counts.tolist() == [2.0, 1.0, 0.0, 1.0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 20), min_size=TTFT_BUCKETS.size + 1, max_size=TTFT_BUCKETS.size + 1), min_size=1, max_size=6),
    st.sampled_from([0.5, 0.9, 0.95, 0.99]),
)
def test_row_quantiles_equal_scalar(rows, quantile):
    counts = np.array(rows, dtype=float)
    vectorised = histogram_quantile_rows(quantile, TTFT_BUCKETS, counts)
    scalar = np.array([histogram_quantile(quantile, TTFT_BUCKETS, row) for row in counts])
    assert np.allclose(vectorised, scalar, equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0005, 400.0), min_size=1, max_size=200), st.sampled_from([0.5, 0.9, 0.99]))
def test_quantile_within_bucket_of_true_value(values, quantile):
    samples = np.array(values)
    estimate = histogram_quantile(quantile, TTFT_BUCKETS, bucket_counts(samples, TTFT_BUCKETS))
    true = np.quantile(samples, quantile, method="inverted_cdf")
    index = int(np.searchsorted(TTFT_BUCKETS, true, side="left"))
    lower = TTFT_BUCKETS[index - 1] if index > 0 else 0.0
    upper = TTFT_BUCKETS[min(index, TTFT_BUCKETS.size - 1)]
    assert lower - 1e-12 <= estimate <= upper + 1e-12


def _recorder() -> SignalRecorder:
    recorder = SignalRecorder(steps=120, step_s=1.0)
    recorder.arrivals[60:120] = 2.0
    recorder.isl_sum[60:120] = 2000.0
    recorder.completions[60:120] = 2.0
    recorder.osl_sum[60:120] = 300.0
    recorder.ttft[60:120] += bucket_counts(np.array([0.2, 0.3]), TTFT_BUCKETS)
    recorder.ttft_sum[60:120] = 0.5
    recorder.itl[60:120] += bucket_counts(np.array([0.02]), ITL_BUCKETS, weights=np.array([100.0]))
    recorder.itl_sum[60:120] = 2.0
    recorder.kv_usage[DECODE][60:120] = np.linspace(0.2, 0.6, 60)
    recorder.waiting[PREFILL][119] = 7
    return recorder


def test_idle_window_is_idle_not_zero():
    samples = _recorder().samples(60, 60, DECODE, ["ttft_p90", "itl_mean", "isl_mean", "request_rate", "kv_cache_usage"])
    assert samples["ttft_p90"].is_idle
    assert samples["itl_mean"].is_idle
    assert samples["isl_mean"].is_idle
    assert samples["kv_cache_usage"].is_idle
    assert samples["request_rate"].value == 0.0


def test_window_values():
    samples = _recorder().samples(
        120, 60, DECODE, ["request_rate", "isl_mean", "osl_mean", "ttft_mean", "itl_mean", "decode_throughput", "kv_cache_usage", "kv_cache_usage_max"]
    )
    assert samples["request_rate"].value == pytest.approx(2.0)
    assert samples["isl_mean"].value == pytest.approx(1000.0)
    assert samples["osl_mean"].value == pytest.approx(150.0)
    assert samples["ttft_mean"].value == pytest.approx(0.25)
    assert samples["itl_mean"].value == pytest.approx(0.02)
    assert samples["decode_throughput"].value == pytest.approx(100.0)
    assert samples["kv_cache_usage"].value == pytest.approx(0.4)
    assert samples["kv_cache_usage_max"].value == pytest.approx(0.6)


def test_role_gauges_differ_by_role():
    recorder = _recorder()
    assert recorder.samples(120, 60, PREFILL, ["requests_waiting"])["requests_waiting"].value == 7
    assert recorder.samples(120, 60, DECODE, ["requests_waiting"])["requests_waiting"].value == 0


def test_unsimulated_signal_is_unknown():
    sample = _recorder().samples(120, 60, DECODE, ["gpu_power"])["gpu_power"]
    assert sample.is_unknown
    assert "not simulated" in sample.reason
