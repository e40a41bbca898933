"""The metric source interface and in-memory sources for tests and replay."""

from __future__ import annotations

import bisect
from typing import Mapping, Protocol, Sequence, runtime_checkable

from metrics.sample import Sample, SignalRequest

# target -> signal -> sample
Samples = dict[str, dict[str, Sample]]
# target -> signal -> [(unix time in seconds, sample), ...] in time order
SampleSeries = dict[str, dict[str, list[tuple[float, Sample]]]]


@runtime_checkable
class MetricSource(Protocol):
    """A source of signals for the engine: Prometheus live, or recorded data in a backtest."""

    def fetch(self, requests: Sequence[SignalRequest], now: float | None = None) -> Samples:
        """Return a sample for every request, keyed by target and signal.

        `now` is the evaluation time in Unix seconds; None means the source's current time. A
        failed read must not raise: the affected samples are unknown, with the reason. The
        controller treats a source that raises anyway as if every sample were unknown.
        """
        ...


class StaticSource:
    """A source with fixed values, for tests: each (target, signal) has one sample or number.

    A number goes through `Sample.of`, so NaN is idle. A request with no entry is unknown.
    """

    def __init__(self, values: Mapping[str, Mapping[str, Sample | float]] | None = None) -> None:
        self._values: dict[str, dict[str, Sample]] = {}
        self.fetches = 0
        for target, signals in (values or {}).items():
            for signal, value in signals.items():
                self.set(target, signal, value)

    def set(self, target: str, signal: str, value: Sample | float) -> None:
        """Set or replace the sample of one target and signal."""
        sample = value if isinstance(value, Sample) else Sample.of(float(value))
        self._values.setdefault(target, {})[signal] = sample

    def fetch(self, requests: Sequence[SignalRequest], now: float | None = None) -> Samples:
        self.fetches += 1
        result: Samples = {}
        for request in requests:
            sample = self._values.get(request.target, {}).get(request.signal)
            if sample is None:
                sample = Sample.unknown(f"no value for {request.target} {request.signal} in the static source")
            result.setdefault(request.target, {})[request.signal] = sample
        return result


class ReplaySource:
    """A source that replays recorded series, for example the output of `PrometheusSource.fetch_range`.

    `fetch(now=t)` returns, per request, the latest recorded sample at or before `t`. A sample older
    than `max_age_seconds` counts as missing and is unknown, as Prometheus treats a series as stale
    after its lookback delta (5 minutes by default).
    """

    def __init__(self, series: SampleSeries, *, max_age_seconds: float = 300.0) -> None:
        if max_age_seconds <= 0:
            raise ValueError(f"max_age_seconds must be positive, got {max_age_seconds}")
        self.max_age_seconds = max_age_seconds
        self._times: dict[tuple[str, str], list[float]] = {}
        self._samples: dict[tuple[str, str], list[Sample]] = {}
        for target, signals in series.items():
            for signal, points in signals.items():
                ordered = sorted(points, key=lambda point: point[0])
                self._times[(target, signal)] = [time for time, _ in ordered]
                self._samples[(target, signal)] = [sample for _, sample in ordered]

    def fetch(self, requests: Sequence[SignalRequest], now: float | None = None) -> Samples:
        if now is None:
            raise ValueError("ReplaySource.fetch needs now: a replay has no current time")
        result: Samples = {}
        for request in requests:
            result.setdefault(request.target, {})[request.signal] = self._sample_at(request, now)
        return result

    def _sample_at(self, request: SignalRequest, now: float) -> Sample:
        key = (request.target, request.signal)
        times = self._times.get(key)
        if not times:
            return Sample.unknown(f"no recorded series for {request.target} {request.signal}")
        index = bisect.bisect_right(times, now) - 1
        if index < 0:
            return Sample.unknown(f"no recorded sample for {request.target} {request.signal} at or before {now:g}")
        if now - times[index] > self.max_age_seconds:
            return Sample.unknown(
                f"latest recorded sample for {request.target} {request.signal} is {now - times[index]:g} s old"
            )
        return self._samples[key][index]
