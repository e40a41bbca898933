"""The backfill builder of the Prometheus fixture: OpenMetrics text and histogram bucket counts."""

from __future__ import annotations

import pytest

from tests.fixtures.prometheus import T0, Backfill, quantile_buckets


def test_counter_family_strips_total():
    text = Backfill().counter("jobs_total", {"a": "1"}, [(T0, 1), (T0 + 15, 2)]).to_openmetrics()
    assert text.splitlines() == [
        "# TYPE jobs counter",
        'jobs_total{a="1"} 1.0 1700000000.0',
        'jobs_total{a="1"} 2.0 1700000015.0',
        "# EOF",
    ]


def test_label_values_escaped():
    text = Backfill().gauge("g", {"name": 'a"b\\c'}, [(T0, 1)]).to_openmetrics()
    assert 'g{name="a\\"b\\\\c"} 1.0 1700000000.0' in text


def test_histogram_adds_inf_bucket():
    text = Backfill().histogram("h", {}, [(T0, {1.0: 3}, 2.5, 4)]).to_openmetrics()
    assert text.splitlines()[1:5] == [
        'h_bucket{le="1.0"} 3.0 1700000000.0',
        'h_bucket{le="+Inf"} 4.0 1700000000.0',
        "h_count 4.0 1700000000.0",
        "h_sum 2.5 1700000000.0",
    ]


def test_steady_histogram_counts():
    data = Backfill().steady_histogram("h", {}, rate=2, observations={0.1: 1, 0.5: 3}, start=T0, end=T0 + 10, step=10)
    lines = data.to_openmetrics().splitlines()
    assert 'h_bucket{le="0.1"} 5.0 1700000010.0' in lines
    assert 'h_bucket{le="0.5"} 20.0 1700000010.0' in lines
    assert "h_count 20.0 1700000010.0" in lines
    assert "h_sum 8.0 1700000010.0" in [line for line in lines if line.startswith("h_sum")][-1:]


def test_quantile_buckets_bracket_values():
    buckets = quantile_buckets({0.8: 1})
    assert 0.8 in buckets
    assert 0.8 * 0.99 in buckets
    assert buckets == sorted(buckets)


def test_family_type_conflict():
    data = Backfill().gauge("x", {}, [(T0, 1)])
    with pytest.raises(ValueError, match="already a gauge"):
        data.histogram("x", {}, [])
