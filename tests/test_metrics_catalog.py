"""Signal catalog: names, shapes, preset data and rendered queries."""

from __future__ import annotations

import pytest

from autoscaler.config import CustomSignal
from metrics.catalog import QueryShape, SignalCatalog, UnknownSignalError, resolve
from metrics.presets import BUILTIN_PRESETS, PresetError, load_preset, parse_preset


@pytest.mark.parametrize(
    ("name", "shape", "quantile", "unit"),
    [
        ("ttft_p50", QueryShape.QUANTILE, 0.5, "seconds"),
        ("ttft_p90", QueryShape.QUANTILE, 0.9, "seconds"),
        ("ttft_p75", QueryShape.QUANTILE, 0.75, "seconds"),
        ("ttft_p999", QueryShape.QUANTILE, 0.999, "seconds"),
        ("ttft_p05", QueryShape.QUANTILE, 0.05, "seconds"),
        ("ttft_mean", QueryShape.MEAN, None, "seconds"),
        ("itl_p99", QueryShape.QUANTILE, 0.99, "seconds"),
        ("itl_mean", QueryShape.MEAN, None, "seconds"),
        ("isl_mean", QueryShape.MEAN, None, "tokens"),
        ("osl_p90", QueryShape.QUANTILE, 0.9, "tokens"),
        ("request_rate", QueryShape.RATE, None, "requests/s"),
        ("decode_throughput", QueryShape.RATE, None, "tokens/s"),
        ("kv_cache_usage", QueryShape.GAUGE_AVG, None, "fraction 0..1"),
        ("kv_cache_usage_max", QueryShape.GAUGE_MAX, None, "fraction 0..1"),
        ("requests_waiting", QueryShape.GAUGE_SUM, None, "requests"),
        ("requests_inflight", QueryShape.GAUGE_SUM, None, "requests"),
    ],
)
def test_dynamo_signal_shapes(name, shape, quantile, unit):
    definition = resolve(name, "dynamo", 60)
    assert definition.shape is shape
    assert definition.quantile == quantile
    assert definition.unit == unit
    assert definition.idle_when_absent is False


@pytest.mark.parametrize(
    ("preset", "name", "query"),
    [
        (
            "dynamo",
            "ttft_p90",
            'histogram_quantile(0.9, sum by (le, namespace) '
            '(rate(dynamo_frontend_time_to_first_token_seconds_bucket{namespace=~"llm"}[60s])))',
        ),
        (
            "dynamo",
            "ttft_mean",
            'sum by (namespace) (increase(dynamo_frontend_time_to_first_token_seconds_sum{namespace=~"llm"}[60s]))'
            ' / sum by (namespace) (increase(dynamo_frontend_time_to_first_token_seconds_count{namespace=~"llm"}[60s]))',
        ),
        (
            "dynamo",
            "request_rate",
            '(sum by (namespace) (rate(dynamo_frontend_requests_started_total{namespace=~"llm"}[60s])))'
            ' or (sum by (namespace) (rate(dynamo_frontend_requests_total{namespace=~"llm"}[60s])))',
        ),
        ("vllm", "kv_cache_usage_max", '(max by (namespace) (vllm:kv_cache_usage_perc{namespace=~"llm"})) or '
         '(max by (namespace) (vllm:gpu_cache_usage_perc{namespace=~"llm"}))'),
        ("vllm", "requests_running", 'sum by (namespace) (vllm:num_requests_running{namespace=~"llm"})'),
        (
            "vllm",
            "requests_inflight",
            'sum by (namespace) ({__name__=~"vllm:num_requests_running|vllm:num_requests_waiting",namespace=~"llm"})',
        ),
        ("sglang", "kv_cache_usage", 'avg by (namespace) (sglang:token_usage{namespace=~"llm"})'),
        (
            "sglang",
            "isl_mean",
            'sum by (namespace) (increase(sglang:prompt_tokens_total{namespace=~"llm"}[60s]))'
            ' / sum by (namespace) (increase(sglang:num_requests_total{namespace=~"llm"}[60s]))',
        ),
    ],
)
def test_rendered_query(preset, name, query):
    assert resolve(name, preset, 60).query('namespace=~"llm"', ["namespace"]) == query


def test_query_without_labels():
    query = resolve("ttft_p90", "dynamo", 30).query("", [])
    assert query == "histogram_quantile(0.9, sum by (le) (rate(dynamo_frontend_time_to_first_token_seconds_bucket{}[30s])))"


def test_window_in_query():
    assert "[300s]" in resolve("itl_mean", "vllm", 300).query("", ["pod"])


@pytest.mark.parametrize(
    ("preset", "name", "message"),
    [
        ("dynamo", "ttft_p9x", "valid signals: ttft_p50"),
        ("dynamo", "latency", "unknown signal 'latency'"),
        ("dynamo", "requests_running", "not available with preset dynamo"),
        ("dynamo", "queue_time_p90", "not available with preset dynamo"),
        ("sglang", "isl_p90", "use isl_mean"),
        ("vllm", "ttft_p100", "p100 is ambiguous"),
        ("vllm", "ttft_p00", "p00 is ambiguous"),
        ("vllm", "ttft_p9", "unknown signal 'ttft_p9'"),
    ],
)
def test_resolve_errors(preset, name, message):
    with pytest.raises(UnknownSignalError, match=message):
        resolve(name, preset, 60)


def test_unknown_signal_lists_custom_names():
    custom = {"gpu_power": CustomSignal(query="sum by ({by}) (power{{selector}})")}
    with pytest.raises(UnknownSignalError, match="gpu_power"):
        resolve("nope", "dynamo", 60, custom)


def test_custom_signal_query():
    custom = {"gpu_power": CustomSignal(query="sum by ({by}) (rate(power{{selector}}[{window}]))", idleWhenAbsent=True)}
    definition = resolve("gpu_power", "dynamo", 45, custom)
    assert definition.shape is QueryShape.CUSTOM
    assert definition.idle_when_absent is True
    assert definition.query('pod=~"a"', ["pod", "namespace"]) == 'sum by (pod, namespace) (rate(power{pod=~"a"}[45s]))'


def test_custom_signal_overrides_preset():
    custom = {"ttft_p90": CustomSignal(query="my_ttft{{selector}} # {by}")}
    assert resolve("ttft_p90", "dynamo", 60, custom).shape is QueryShape.CUSTOM


def test_names_resolve_in_every_preset():
    for preset in BUILTIN_PRESETS:
        catalog = SignalCatalog(preset=preset)
        for name in catalog.names():
            assert catalog.resolve(name).name == name


def test_names_per_preset():
    assert "requests_running" not in SignalCatalog(preset="dynamo").names()
    assert "queue_time_p90" in SignalCatalog(preset="vllm").names()
    assert "isl_p90" not in SignalCatalog(preset="sglang").names()
    assert "isl_mean" in SignalCatalog(preset="sglang").names()


def test_invalid_window():
    with pytest.raises(ValueError, match="window_seconds must be positive, got 0"):
        SignalCatalog(preset="dynamo", window_seconds=0)


def test_unknown_preset():
    with pytest.raises(PresetError, match="unknown preset 'trtllm'; valid presets: dynamo, vllm, sglang"):
        load_preset("trtllm")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a mapping"),
        ({"families": {"ttft": {"histogram": ["x"]}}}, "name: missing"),
        ({"name": "e"}, "families: missing or empty"),
        ({"name": "e", "families": {"ttft": {"histogram": ["x"]}}, "extra": 1}, "unknown fields \\['extra'\\]"),
        ({"name": "e", "families": {"latency": {"histogram": ["x"]}}}, "families.latency: unknown signal family"),
        ({"name": "e", "families": {"ttft": {"gauge": ["x"]}}}, "type gauge is not valid here; use histogram or ratio"),
        ({"name": "e", "families": {"ttft": {"histogram": ["x"], "counter": ["y"]}}}, "set exactly one of"),
        ({"name": "e", "families": {"ttft": {"histogram": []}}}, "expected a non-empty list"),
        ({"name": "e", "families": {"ttft": {"histogram": ["bad-name"]}}}, "invalid Prometheus metric name 'bad-name'"),
        ({"name": "e", "families": {"request_rate": {"counter": ["x"], "combine": "sum"}}}, "only valid for gauges"),
        ({"name": "e", "families": {"requests_waiting": {"gauge": ["x"], "combine": "max"}}}, "must be first or sum"),
        ({"name": "e", "families": {"isl": {"ratio": {"numerator": "a"}}}}, "expected {numerator"),
        ({"name": "e", "families": {"ttft": {"histogram": ["x"], "unit": "s"}}}, "unknown fields \\['unit'\\]"),
    ],
)
def test_preset_errors(data, message):
    with pytest.raises(PresetError, match=message) as raised:
        parse_preset(data, source="engine.yaml")
    assert str(raised.value).startswith("engine.yaml:")


def test_preset_files_name_themselves():
    for preset in BUILTIN_PRESETS:
        assert load_preset(preset).name == preset
