"""Signals of a simulated deployment, computed the way Prometheus would compute them.

The serving models write per-step counters and gauges into a `SignalRecorder`: histogram
bucket counts of TTFT, ITL (one observation per output token) and queue time, request and
token counters, and gauges. At a tick, `SignalRecorder.samples` turns the last window into
one `Sample` per signal. Quantiles come from `histogram_quantile` over the summed buckets, with
linear interpolation inside a bucket. Means are sum / count, rates are increase / window, and
gauges are their mean (or maximum) over the window. A window without observations is idle
(0/0), never zero.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from metrics.sample import Sample

PREFILL = "prefill"
DECODE = "decode"
ROLES = (PREFILL, DECODE)


def log_buckets(minimum: float, maximum: float, count: int) -> np.ndarray:
    """Return histogram upper bounds as the Dynamo frontend builds them.

    The first bound is 0, then the points 1 .. count-1 of a log scale whose point 0 is
    `minimum` and point count-1 is `maximum` (so the smallest non-zero bound is one step above
    `minimum`), rounded to two significant figures, with repeats removed.
    """
    values = [0.0]
    for index in range(1, count):
        value = math.exp(math.log(minimum) + (math.log(maximum) - math.log(minimum)) * index / (count - 1))
        magnitude = math.floor(math.log10(abs(value)))
        scale = 10 ** (1 - magnitude)
        rounded = round(value * scale) / scale
        if rounded != values[-1]:
            values.append(rounded)
    return np.array(values)


# Default bounds of the Dynamo frontend histograms: TTFT from minimum 1 ms to 480 s with 18
# bounds, ITL from 1 ms to 2 s with 13 bounds (DYN_METRICS_TTFT_* / DYN_METRICS_ITL_* unset).
TTFT_BUCKETS = log_buckets(0.001, 480.0, 18)
ITL_BUCKETS = log_buckets(0.001, 2.0, 13)


def histogram_quantile(quantile: float, bounds: np.ndarray, counts: np.ndarray) -> float:
    """Return the quantile of a histogram with PromQL `histogram_quantile` semantics.

    `counts` has one count per bucket, not cumulative, with the +Inf bucket last
    (`len(counts) == len(bounds) + 1`). Returns NaN for an empty histogram. A rank in the
    +Inf bucket returns the largest finite bound. Inside a bucket the value is interpolated
    linearly between its lower and upper bound, and the lower bound of the first bucket is 0.
    """
    # Plain Python over the ~20 buckets: the backtest calls this for every quantile signal at
    # every tick, and numpy's per-call overhead exceeds the work on arrays this small.
    values = counts.tolist() if isinstance(counts, np.ndarray) else list(counts)
    total = sum(values)
    if total <= 0:
        return math.nan
    rank = quantile * total
    below = 0.0
    index = 0
    for index, count in enumerate(values):
        if below + count >= rank:
            break
        below += count
    else:
        index = len(values)
    if index >= len(bounds):
        return float(bounds[-1])
    upper = float(bounds[index])
    if index == 0:
        if upper <= 0:
            return upper
        lower = 0.0
    else:
        lower = float(bounds[index - 1])
    in_bucket = values[index]
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket


def bucket_counts(values: np.ndarray, bounds: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Count values per bucket (`le` semantics: a value equal to a bound falls in that bucket)."""
    index = np.searchsorted(bounds, values, side="left")
    return np.bincount(index, weights=weights, minlength=bounds.size + 1).astype(float)


_QUANTILE = re.compile(r"^(ttft|itl|queue_time)_p(\d{2,3})$")

HISTOGRAM_SIGNALS = ("ttft", "itl", "queue_time")

SUPPORTED_SIGNALS = (
    "ttft_p50 ttft_p90 ttft_p95 ttft_p99 ttft_mean itl_p50 itl_p90 itl_p95 itl_p99 itl_mean "
    "queue_time_p50 queue_time_p90 queue_time_p95 queue_time_p99 queue_time_mean request_rate isl_mean "
    "osl_mean kv_cache_usage kv_cache_usage_max requests_waiting requests_running decode_throughput"
).split()


_ROLE_SIGNALS = frozenset({"kv_cache_usage", "kv_cache_usage_max", "requests_waiting", "requests_running"})


def histogram_quantile_rows(quantile: float, bounds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Apply `histogram_quantile` to every row of a 2-D array of bucket counts at once."""
    cumulative = np.cumsum(counts, axis=1)
    total = cumulative[:, -1]
    rank = quantile * total
    index = np.argmax(cumulative >= rank[:, None] - 1e-12, axis=1)
    finite = index < bounds.size
    safe = np.minimum(index, bounds.size - 1)
    upper = bounds[safe]
    lower = np.where(safe > 0, bounds[np.maximum(safe - 1, 0)], 0.0)
    below = np.where(safe > 0, np.take_along_axis(cumulative, np.maximum(safe - 1, 0)[:, None], axis=1)[:, 0], 0.0)
    in_bucket = np.take_along_axis(counts, safe[:, None], axis=1)[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(in_bucket > 0, lower + (upper - lower) * (rank - below) / in_bucket, upper)
    value = np.where((safe == 0) & (upper <= 0), upper, value)
    value = np.where(finite, value, bounds[-1])
    return np.where(total > 0, value, np.nan)


def window_sums(rows: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """Return, for each end step, the sum of `rows[end - width : end]` (fewer rows at the start)."""
    cumulative = np.concatenate([np.zeros((1,) + rows.shape[1:]), np.cumsum(rows, axis=0)])
    ends = np.clip(ends, 0, rows.shape[0])
    starts = np.maximum(ends - width, 0)
    return cumulative[ends] - cumulative[starts]


@dataclass
class SignalRecorder:
    """Per-step counters and gauges of one simulated deployment (step `step_s` seconds).

    Histogram rows are bucket counts per step. Counters are per-step increments. Gauges are
    per-step values per role. The serving models write into these arrays directly.
    """

    steps: int
    step_s: float

    def __post_init__(self) -> None:
        steps = self.steps
        self.ttft = np.zeros((steps, TTFT_BUCKETS.size + 1))
        self.ttft_sum = np.zeros(steps)
        self.queue = np.zeros((steps, TTFT_BUCKETS.size + 1))
        self.queue_sum = np.zeros(steps)
        self.itl = np.zeros((steps, ITL_BUCKETS.size + 1))
        self.itl_sum = np.zeros(steps)
        self.arrivals = np.zeros(steps)
        self.isl_sum = np.zeros(steps)
        self.completions = np.zeros(steps)
        self.osl_sum = np.zeros(steps)
        self.kv_usage = {role: np.full(steps, np.nan) for role in ROLES}
        self.waiting = {role: np.zeros(steps) for role in ROLES}
        self.running = {role: np.zeros(steps) for role in ROLES}
        self._cache: dict[tuple[str, str], Sample] = {}
        self._histograms: dict[str, np.ndarray] = {}
        self._cache_window: tuple[int, int] = (-1, -1)

    def samples(self, now: float, window_s: float, role: str, signals: Iterable[str]) -> dict[str, Sample]:
        """Return one sample per signal over the window ending at `now`, for a target of `role`."""
        end = min(int(round(now / self.step_s)), self.steps)
        start = max(0, end - max(1, int(round(window_s / self.step_s))))
        window = (end - start) * self.step_s
        if self._cache_window != (start, end):
            self._cache.clear()
            self._histograms.clear()
            self._cache_window = (start, end)
        result = {}
        for signal in signals:
            # Deployment-wide signals are the same for every target, so one tick computes them once.
            key = (signal, role if signal in _ROLE_SIGNALS else "")
            sample = self._cache.get(key)
            if sample is None:
                sample = self._sample(signal, start, end, window, role)
                self._cache[key] = sample
            result[signal] = sample
        return result

    def _sample(self, signal: str, start: int, end: int, window: float, role: str) -> Sample:
        if end <= start:
            return Sample.idle("no simulated time in the window yet")

        match = _QUANTILE.match(signal)
        if match:
            family, percent = match.groups()
            counts, bounds = self._histogram(family, start, end)
            return Sample.of(histogram_quantile(int(percent) / (100 if len(percent) == 2 else 1000), bounds, counts))
        if signal.endswith("_mean") and signal.rsplit("_", 1)[0] in HISTOGRAM_SIGNALS:
            family = signal.rsplit("_", 1)[0]
            counts, _ = self._histogram(family, start, end)
            total = {"ttft": self.ttft_sum, "itl": self.itl_sum, "queue_time": self.queue_sum}[family][start:end].sum()
            return _ratio(total, counts.sum())

        if signal == "request_rate":
            return Sample.of(self.arrivals[start:end].sum() / window)
        if signal == "isl_mean":
            return _ratio(self.isl_sum[start:end].sum(), self.arrivals[start:end].sum())
        if signal == "osl_mean":
            return _ratio(self.osl_sum[start:end].sum(), self.completions[start:end].sum())
        if signal == "decode_throughput":
            return Sample.of(self.itl[start:end].sum() / window)

        if signal in ("kv_cache_usage", "kv_cache_usage_max"):
            values = self.kv_usage[role][start:end]
            values = values[~np.isnan(values)]
            if values.size == 0:
                return Sample.idle("no ready replica in the window")
            return Sample.of(float(values.mean() if signal == "kv_cache_usage" else values.max()))
        if signal == "requests_waiting":
            return Sample.of(float(self.waiting[role][end - 1]))
        if signal == "requests_running":
            return Sample.of(float(self.running[role][end - 1]))
        return Sample.unknown(f"signal {signal} is not simulated by the backtest; simulated: {', '.join(SUPPORTED_SIGNALS)}")

    def _histogram(self, family: str, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        rows, bounds = {"ttft": (self.ttft, TTFT_BUCKETS), "itl": (self.itl, ITL_BUCKETS)}.get(family, (self.queue, TTFT_BUCKETS))
        counts = self._histograms.get(family)
        if counts is None:
            counts = rows[start:end].sum(axis=0)
            self._histograms[family] = counts
        return counts, bounds


def _ratio(total: float, count: float) -> Sample:
    if count <= 0:
        return Sample.idle("0/0 over the window")
    return Sample.of(float(total) / float(count))

