"""The MetricSource protocol and the in-memory sources."""

from __future__ import annotations

import math

import pytest

from metrics.catalog import SignalCatalog
from metrics.prometheus import PrometheusSource
from metrics.sample import Sample, SampleKind, SignalRequest
from metrics.source import MetricSource, ReplaySource, StaticSource


def test_sources_satisfy_protocol():
    assert isinstance(StaticSource(), MetricSource)
    assert isinstance(ReplaySource({}), MetricSource)
    source = PrometheusSource(url="http://127.0.0.1:9", catalog=SignalCatalog())
    assert isinstance(source, MetricSource)
    source.close()


def test_static_source_values():
    source = StaticSource({"a": {"ttft_p90": 0.5, "request_rate": math.nan}, "b": {"itl_p90": Sample.unknown("down")}})
    samples = source.fetch(
        [
            SignalRequest("a", "ttft_p90"),
            SignalRequest("a", "request_rate"),
            SignalRequest("b", "itl_p90"),
            SignalRequest("b", "ttft_p90"),
        ]
    )
    assert samples["a"]["ttft_p90"] == Sample.of(0.5)
    assert samples["a"]["request_rate"].kind is SampleKind.IDLE
    assert samples["b"]["itl_p90"].reason == "down"
    assert samples["b"]["ttft_p90"].kind is SampleKind.UNKNOWN
    assert source.fetches == 1


def test_static_source_set_replaces():
    source = StaticSource({"a": {"x": 1.0}})
    source.set("a", "x", 2.0)
    assert source.fetch([SignalRequest("a", "x")])["a"]["x"].value == 2.0


SERIES = {
    "a": {
        "ttft_p90": [(100.0, Sample.of(0.3)), (160.0, Sample.idle()), (220.0, Sample.of(0.5))],
    }
}


@pytest.mark.parametrize(
    ("now", "kind", "value"),
    [
        (99.0, SampleKind.UNKNOWN, None),
        (100.0, SampleKind.VALUE, 0.3),
        (159.0, SampleKind.VALUE, 0.3),
        (160.0, SampleKind.IDLE, None),
        (300.0, SampleKind.VALUE, 0.5),
        (520.0, SampleKind.VALUE, 0.5),
        (521.0, SampleKind.UNKNOWN, None),
    ],
)
def test_replay_source_picks_latest(now, kind, value):
    sample = ReplaySource(SERIES).fetch([SignalRequest("a", "ttft_p90")], now=now)["a"]["ttft_p90"]
    assert sample.kind is kind
    assert sample.value == value


def test_replay_source_missing_series_is_unknown():
    sample = ReplaySource(SERIES).fetch([SignalRequest("b", "ttft_p90")], now=200.0)["b"]["ttft_p90"]
    assert sample.kind is SampleKind.UNKNOWN
    assert "no recorded series for b ttft_p90" in sample.reason


def test_replay_source_needs_now():
    with pytest.raises(ValueError, match="needs now"):
        ReplaySource(SERIES).fetch([SignalRequest("a", "ttft_p90")])


def test_replay_source_sorts_points():
    series = {"a": {"x": [(200.0, Sample.of(2)), (100.0, Sample.of(1))]}}
    sample = ReplaySource(series).fetch([SignalRequest("a", "x")], now=150.0)["a"]["x"]
    assert sample.value == 1
