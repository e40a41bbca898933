"""The signal catalog: stable signal names, their units, and the PromQL that computes them.

A signal name is product vocabulary (`ttft_p90`, `kv_cache_usage`), and the preset of the
configured engine names the metric that carries it. Every definition also states how to read a missing result:

- quantile and mean: zero traffic in the window makes the query 0/0 = NaN, which is idle;
- rate: a counter that did not move is a real 0;
- any shape: no series at all for a target is unknown (a label mismatch, a missing exporter or a
  metric that was never written), unless a custom signal sets `idleWhenAbsent`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from metrics.presets import MetricFamily, Preset, load_preset
from metrics.promql import grouping, regex_alternatives

if TYPE_CHECKING:
    from autoscaler.config import CustomSignal, MetricsConfig


class QueryShape(enum.Enum):
    QUANTILE = "quantile"
    MEAN = "mean"
    GAUGE_AVG = "gauge_avg"
    GAUGE_MAX = "gauge_max"
    GAUGE_SUM = "gauge_sum"
    RATE = "rate"
    CUSTOM = "custom"


class UnknownSignalError(ValueError):
    """A signal name that neither the catalog, the preset nor the custom signals define."""


# Distribution families: `<family>_p<NN>` (histogram presets only) and `<family>_mean`.
DISTRIBUTION_FAMILIES: dict[str, tuple[str, str]] = {
    "ttft": ("seconds", "time to first token"),
    "itl": ("seconds", "inter-token latency"),
    "queue_time": ("seconds", "time a request waits before it is scheduled"),
    "e2e_latency": ("seconds", "end-to-end request latency"),
    "isl": ("tokens", "input sequence length"),
    "osl": ("tokens", "output sequence length"),
}

# The quantiles listed by name in errors and docs; any other two-digit or longer `p<digits>` works.
LISTED_PERCENTILES = ("50", "90", "95", "99")


@dataclass(frozen=True)
class _NamedSignal:
    family: str
    shape: QueryShape
    unit: str
    description: str


NAMED_SIGNALS: dict[str, _NamedSignal] = {
    "request_rate": _NamedSignal("request_rate", QueryShape.RATE, "requests/s", "request rate"),
    "decode_throughput": _NamedSignal("decode_throughput", QueryShape.RATE, "tokens/s", "output tokens per second"),
    "kv_cache_usage": _NamedSignal(
        "kv_cache_usage", QueryShape.GAUGE_AVG, "fraction 0..1", "KV-cache usage, mean over the target's replicas"
    ),
    "kv_cache_usage_max": _NamedSignal(
        "kv_cache_usage", QueryShape.GAUGE_MAX, "fraction 0..1", "KV-cache usage of the fullest replica"
    ),
    "requests_waiting": _NamedSignal("requests_waiting", QueryShape.GAUGE_SUM, "requests", "queued requests"),
    "requests_running": _NamedSignal("requests_running", QueryShape.GAUGE_SUM, "requests", "requests being served"),
    "requests_inflight": _NamedSignal(
        "requests_inflight", QueryShape.GAUGE_SUM, "requests", "requests accepted and not finished"
    ),
}

_QUANTILE_NAME = re.compile(r"(?P<family>[a-z0-9_]+)_p(?P<digits>[0-9]{2,})")


@dataclass(frozen=True)
class SignalDefinition:
    """How to compute one signal for many targets with one query, and how to read what is missing.

    `metrics` are alternative metric names (histogram base names for QUANTILE), tried in order per
    series, or added together when `combine` is "sum". MEAN uses `ratios`, alternative
    (numerator, denominator) counter pairs. CUSTOM uses `template`.
    """

    name: str
    shape: QueryShape
    unit: str
    window_seconds: int
    description: str = ""
    metrics: tuple[str, ...] = ()
    combine: str = "first"
    quantile: float | None = None
    ratios: tuple[tuple[str, str], ...] = ()
    template: str | None = None
    idle_when_absent: bool = False

    @property
    def window(self) -> str:
        return f"{self.window_seconds}s"

    def query(self, matchers: str, by: Sequence[str]) -> str:
        """Render the PromQL for all targets at once.

        `matchers` is a comma-separated label matcher list without braces (it may be empty), and
        `by` the labels that identify targets. Each result series carries exactly those labels.
        """
        group = grouping(by)
        if self.shape is QueryShape.CUSTOM:
            assert self.template is not None
            return self.template.replace("{selector}", matchers).replace("{by}", group).replace("{window}", self.window)
        if self.shape is QueryShape.QUANTILE:
            bucket_group = ", ".join(["le", group]) if group else "le"
            alternatives = [
                f"sum by ({bucket_group}) (rate({_selector(metric + '_bucket', matchers)}[{self.window}]))"
                for metric in self.metrics
            ]
            return f"histogram_quantile({self.quantile!r}, {_either(alternatives)})"
        if self.shape is QueryShape.MEAN:
            alternatives = [
                f"sum by ({group}) (increase({_selector(numerator, matchers)}[{self.window}]))"
                f" / sum by ({group}) (increase({_selector(denominator, matchers)}[{self.window}]))"
                for numerator, denominator in self.ratios
            ]
            return _either(alternatives)
        if self.shape is QueryShape.RATE:
            return _either([f"sum by ({group}) (rate({_selector(m, matchers)}[{self.window}]))" for m in self.metrics])

        aggregation = {QueryShape.GAUGE_AVG: "avg", QueryShape.GAUGE_MAX: "max", QueryShape.GAUGE_SUM: "sum"}[self.shape]
        if self.combine == "sum":
            names = f'__name__=~"{regex_alternatives(self.metrics)}"'
            return f"{aggregation} by ({group}) ({{{','.join(filter(None, [names, matchers]))}}})"
        return _either([f"{aggregation} by ({group}) ({_selector(m, matchers)})" for m in self.metrics])


def _selector(metric: str, matchers: str) -> str:
    return f"{metric}{{{matchers}}}"


def _either(alternatives: Sequence[str]) -> str:
    """Join alternatives with `or`: per label set, the first alternative with a result wins."""
    if len(alternatives) == 1:
        return alternatives[0]
    return " or ".join(f"({alternative})" for alternative in alternatives)


class SignalCatalog:
    """The signals available with one preset, window and set of custom signals."""

    def __init__(
        self,
        *,
        preset: str | Preset = "dynamo",
        window_seconds: int = 60,
        custom: Mapping[str, CustomSignal] | None = None,
    ) -> None:
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be positive, got {window_seconds}")
        self.preset = load_preset(preset) if isinstance(preset, str) else preset
        self.window_seconds = window_seconds
        self.custom = dict(custom or {})
        self._cache: dict[str, SignalDefinition] = {}

    @classmethod
    def from_config(cls, config: MetricsConfig) -> SignalCatalog:
        return cls(preset=config.preset, window_seconds=config.window_seconds, custom=config.signals)

    def names(self) -> list[str]:
        """List the signal names this catalog resolves, quantiles other than the listed ones aside."""
        names = list(self.custom)
        for family_name in DISTRIBUTION_FAMILIES:
            family = self.preset.families.get(family_name)
            if family is None:
                continue
            if family.type == "histogram":
                names.extend(f"{family_name}_p{digits}" for digits in LISTED_PERCENTILES)
            names.append(f"{family_name}_mean")
        names.extend(name for name, spec in NAMED_SIGNALS.items() if spec.family in self.preset.families)
        return list(dict.fromkeys(names))

    def resolve(self, name: str) -> SignalDefinition:
        """Return the definition of `name`; raise UnknownSignalError listing the valid names."""
        definition = self._cache.get(name)
        if definition is None:
            definition = self._resolve(name)
            self._cache[name] = definition
        return definition

    def _resolve(self, name: str) -> SignalDefinition:
        custom = self.custom.get(name)
        if custom is not None:
            return SignalDefinition(
                name=name,
                shape=QueryShape.CUSTOM,
                unit="",
                window_seconds=self.window_seconds,
                description="custom PromQL",
                template=custom.query,
                idle_when_absent=custom.idle_when_absent,
            )
        if name in NAMED_SIGNALS:
            spec = NAMED_SIGNALS[name]
            family = self._family(name, spec.family)
            return SignalDefinition(
                name=name,
                shape=spec.shape,
                unit=spec.unit,
                window_seconds=self.window_seconds,
                description=spec.description,
                metrics=family.metrics,
                combine=family.combine,
            )
        if name.endswith("_mean") and name.removesuffix("_mean") in DISTRIBUTION_FAMILIES:
            return self._mean(name, name.removesuffix("_mean"))
        match = _QUANTILE_NAME.fullmatch(name)
        if match and match["family"] in DISTRIBUTION_FAMILIES:
            return self._quantile(name, match["family"], match["digits"])
        raise UnknownSignalError(self._unknown_message(name))

    def _family(self, signal: str, family_name: str) -> MetricFamily:
        family = self.preset.families.get(family_name)
        if family is None:
            raise UnknownSignalError(
                f"signal {signal!r} is not available with preset {self.preset.name}: the preset has no metric "
                f"for {family_name}. Define {signal!r} under metrics.signals with a PromQL query."
            )
        return family

    def _mean(self, name: str, family_name: str) -> SignalDefinition:
        family = self._family(name, family_name)
        if family.type == "ratio":
            assert family.numerator is not None and family.denominator is not None
            ratios = ((family.numerator, family.denominator),)
        else:
            ratios = tuple((f"{metric}_sum", f"{metric}_count") for metric in family.metrics)
        unit, description = DISTRIBUTION_FAMILIES[family_name]
        return SignalDefinition(
            name=name,
            shape=QueryShape.MEAN,
            unit=unit,
            window_seconds=self.window_seconds,
            description=f"mean {description}",
            ratios=ratios,
        )

    def _quantile(self, name: str, family_name: str, digits: str) -> SignalDefinition:
        if digits.startswith("00") or (len(digits) > 2 and digits.endswith("0")):
            raise UnknownSignalError(
                f"invalid quantile in signal {name!r}: p{digits} is ambiguous; write the percentile's digits, "
                f"for example {family_name}_p05, {family_name}_p90 or {family_name}_p999 (99.9th percentile)"
            )
        family = self._family(name, family_name)
        if family.type != "histogram":
            raise UnknownSignalError(
                f"signal {name!r} is not available with preset {self.preset.name}: {family_name} has no histogram "
                f"there, only a mean; use {family_name}_mean"
            )
        unit, description = DISTRIBUTION_FAMILIES[family_name]
        quantile = float(f"0.{digits}")
        return SignalDefinition(
            name=name,
            shape=QueryShape.QUANTILE,
            unit=unit,
            window_seconds=self.window_seconds,
            description=f"{quantile:g} quantile of {description}",
            metrics=family.metrics,
            quantile=quantile,
        )

    def _unknown_message(self, name: str) -> str:
        valid = ", ".join(self.names())
        families = ", ".join(
            family
            for family in DISTRIBUTION_FAMILIES
            if family in self.preset.families and self.preset.families[family].type == "histogram"
        )
        return (
            f"unknown signal {name!r} (preset {self.preset.name}); valid signals: {valid}; "
            f"any other quantile as <family>_p<digits> for {families} (for example ttft_p75)"
        )


def resolve(
    name: str,
    preset: str | Preset,
    window_seconds: int,
    custom: Mapping[str, CustomSignal] | None = None,
) -> SignalDefinition:
    """Return the definition of signal `name`; raise UnknownSignalError listing the valid names."""
    return SignalCatalog(preset=preset, window_seconds=window_seconds, custom=custom).resolve(name)
