"""Engine presets: which Prometheus metric carries each signal family, one YAML file per engine.

A preset file maps a family name to exactly one source:

    ttft:
      histogram: [vllm:time_to_first_token_seconds]        # base name, without _bucket/_sum/_count
    request_rate:
      counter: [vllm:request_success_total]                # a monotonic counter, read with rate()
    requests_inflight:
      gauge: [vllm:num_requests_running, vllm:num_requests_waiting]
      combine: sum                                         # add the metrics instead of picking one
    isl:
      ratio: {numerator: sglang:prompt_tokens_total, denominator: sglang:num_requests_total}

Several names under `histogram`, `counter` or `gauge` are alternatives for engine releases that
renamed the metric: per series, the first name that has data wins (PromQL `or`), unless
`combine: sum` adds them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml

from metrics.promql import InvalidMetricNameError, validate_metric_name

FamilyType = Literal["histogram", "ratio", "counter", "gauge"]

# Family name -> the source types a preset may give it. Distribution families (latencies and
# sizes) need a histogram for quantiles; a ratio of two counters only gives their mean.
FAMILY_TYPES: dict[str, tuple[FamilyType, ...]] = {
    "ttft": ("histogram", "ratio"),
    "itl": ("histogram", "ratio"),
    "queue_time": ("histogram", "ratio"),
    "e2e_latency": ("histogram", "ratio"),
    "isl": ("histogram", "ratio"),
    "osl": ("histogram", "ratio"),
    "request_rate": ("counter",),
    "decode_throughput": ("counter",),
    "kv_cache_usage": ("gauge",),
    "requests_waiting": ("gauge",),
    "requests_running": ("gauge",),
    "requests_inflight": ("gauge",),
}

BUILTIN_PRESETS = ("dynamo", "vllm", "sglang")


class PresetError(ValueError):
    """An invalid or missing preset file; the message names the file and the field."""


@dataclass(frozen=True)
class MetricFamily:
    """The metric or metrics that carry one signal family in one engine."""

    name: str
    type: FamilyType
    metrics: tuple[str, ...] = ()
    combine: Literal["first", "sum"] = "first"
    numerator: str | None = None
    denominator: str | None = None


@dataclass(frozen=True)
class Preset:
    """The metric families of one engine, by family name."""

    name: str
    families: dict[str, MetricFamily]


@functools.cache
def load_preset(name: str) -> Preset:
    """Load a preset shipped with the package (`dynamo`, `vllm`, `sglang`)."""
    if name not in BUILTIN_PRESETS:
        raise PresetError(f"unknown preset {name!r}; valid presets: {', '.join(BUILTIN_PRESETS)}")
    text = resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return parse_preset(yaml.safe_load(text), source=f"preset {name}.yaml")


def parse_preset(data: Any, *, source: str) -> Preset:
    """Validate a parsed preset document; raise PresetError naming `source` and the field."""
    if not isinstance(data, dict):
        raise PresetError(f"{source}: expected a mapping with name and families, got {type(data).__name__}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise PresetError(f"{source}: name: missing or not a string (got {name!r})")
    families = data.get("families")
    if not isinstance(families, dict) or not families:
        raise PresetError(f"{source}: families: missing or empty (got {families!r})")
    unknown_keys = sorted(set(data) - {"name", "families"})
    if unknown_keys:
        raise PresetError(f"{source}: unknown fields {unknown_keys}; a preset has only name and families")

    parsed = {}
    for family_name, entry in families.items():
        parsed[family_name] = _parse_family(family_name, entry, f"{source}: families.{family_name}")
    return Preset(name=name, families=parsed)


def _parse_family(name: str, entry: Any, path: str) -> MetricFamily:
    allowed_types = FAMILY_TYPES.get(name)
    if allowed_types is None:
        raise PresetError(f"{path}: unknown signal family; valid families: {', '.join(FAMILY_TYPES)}")
    if not isinstance(entry, dict):
        raise PresetError(f"{path}: expected a mapping, got {entry!r}")

    types = [key for key in entry if key in ("histogram", "ratio", "counter", "gauge")]
    if len(types) != 1:
        raise PresetError(f"{path}: set exactly one of histogram, ratio, counter, gauge (got {sorted(entry)})")
    family_type = types[0]
    if family_type not in allowed_types:
        raise PresetError(f"{path}: type {family_type} is not valid here; use {' or '.join(allowed_types)}")
    extra = sorted(set(entry) - {family_type, "combine"})
    if extra:
        raise PresetError(f"{path}: unknown fields {extra}")

    if family_type == "ratio":
        return _parse_ratio(name, entry["ratio"], path)

    combine = entry.get("combine", "first")
    if combine not in ("first", "sum"):
        raise PresetError(f"{path}.combine: must be first or sum (got {combine!r})")
    if combine == "sum" and family_type != "gauge":
        raise PresetError(f"{path}.combine: sum is only valid for gauges (got type {family_type})")
    metrics = entry[family_type]
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics:
        raise PresetError(f"{path}.{family_type}: expected a non-empty list of metric names (got {metrics!r})")
    return MetricFamily(
        name=name,
        type=family_type,
        metrics=tuple(_metric_name(metric, f"{path}.{family_type}") for metric in metrics),
        combine=combine,
    )


def _parse_ratio(name: str, ratio: Any, path: str) -> MetricFamily:
    if not isinstance(ratio, dict) or set(ratio) != {"numerator", "denominator"}:
        raise PresetError(f"{path}.ratio: expected {{numerator: <counter>, denominator: <counter>}} (got {ratio!r})")
    return MetricFamily(
        name=name,
        type="ratio",
        numerator=_metric_name(ratio["numerator"], f"{path}.ratio.numerator"),
        denominator=_metric_name(ratio["denominator"], f"{path}.ratio.denominator"),
    )


def _metric_name(value: Any, path: str) -> str:
    try:
        return validate_metric_name(value)
    except InvalidMetricNameError as error:
        raise PresetError(f"{path}: {error}") from None
