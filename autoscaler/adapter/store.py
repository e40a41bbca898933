"""Per-tick cache of the values the adapter serves, so HPA polling never queries Prometheus.

The controller calls `MetricStore.publish` once per tick. Each call replaces the whole
snapshot, so a target that disappeared from the tick also disappears from the API. Readers
take the current snapshot without locking, because a snapshot is never changed after it is
built.

Metrics per target:
- `grove_autoscaler_desired_replicas`: the engine's desired replica count. An HPA with an
  External metric of target type AverageValue and value 1 computes exactly this count.
- `grove_autoscaler_signal_<signal>`: each raw signal the target's policies read, with the
  signal name lower-cased and every character outside [a-z0-9_] replaced by `_`.

Every series carries the metricLabels `grove_io_target_kind` (podcliqueset,
podcliquescalinggroup or podclique), `grove_io_target_name` and `grove_io_rule` (the
configuration rule); the namespace is the one in the request path.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from autoscaler.adapter.selector import LabelSelector
from autoscaler.targets import TargetRef
from metrics.sample import Sample

if TYPE_CHECKING:
    from autoscaler.engine import Decision

DESIRED_REPLICAS_METRIC = "grove_autoscaler_desired_replicas"
SIGNAL_METRIC_PREFIX = "grove_autoscaler_signal_"

LABEL_TARGET_KIND = "grove_io_target_kind"
LABEL_TARGET_NAME = "grove_io_target_name"
LABEL_RULE = "grove_io_rule"


class MetricNotFound(LookupError):
    """No such metric, or no series of it matches the namespace and selector (HTTP 404)."""


class MetricUnavailable(RuntimeError):
    """The metric exists but its value is not known right now (HTTP 503)."""


@dataclass(frozen=True)
class Series:
    """One value of one metric for one target at one tick; `value` is None when unknown."""

    metric: str
    namespace: str
    target: str
    labels: Mapping[str, str]
    value: str | None
    time: float
    unknown_reason: str = ""


@dataclass(frozen=True)
class Snapshot:
    time: float
    series: Mapping[str, tuple[Series, ...]] = field(default_factory=dict)


def signal_metric_name(signal: str) -> str:
    """Return the external metric name of a signal, e.g. `itl_p90` -> `grove_autoscaler_signal_itl_p90`."""
    return SIGNAL_METRIC_PREFIX + re.sub(r"[^a-z0-9_]", "_", signal.lower())


def format_quantity(value: float) -> str:
    """Format a number as a Kubernetes quantity string.

    Integers are written plainly ("3"), other numbers in milli units rounded to the nearest
    milli ("62m" for 0.062, "1500m" for 1.5). A non-zero value smaller than half a milli
    would round to "0", so it is written in nano units instead ("40n"). Below half a nano,
    the smallest unit Kubernetes has, it is "0n".
    """
    if not math.isfinite(value):
        raise ValueError(f"cannot format {value!r} as a quantity: only finite numbers have one")
    if value == int(value) and abs(value) < 2**63:
        return str(int(value))
    milli = round(value * 1000)
    if milli == 0:
        return f"{round(value * 1e9)}n"
    if milli % 1000 == 0:
        return str(milli // 1000)
    return f"{milli}m"


class MetricStore:
    """The latest tick's metric values, read by the adapter's request threads.

    `max_age_seconds` bounds how old the last published tick may be before every value is
    reported unavailable; None serves the last tick forever. Set it to a few tick intervals,
    so a controller whose loop stopped does not keep an HPA on an old decision.
    """

    def __init__(self, *, max_age_seconds: float | None = None, clock: Callable[[], float] = time.time) -> None:
        if max_age_seconds is not None and max_age_seconds <= 0:
            raise ValueError(f"max_age_seconds must be positive or None, got {max_age_seconds!r}")
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        self._snapshot: Snapshot | None = None
        self._publish_lock = threading.Lock()

    def publish(self, now: float, decisions: Sequence[Decision]) -> None:
        """Replace the cached values with those of one tick's decisions."""
        by_metric: dict[str, list[Series]] = {DESIRED_REPLICAS_METRIC: []}
        for decision in decisions:
            for item in _series_of(now, decision):
                by_metric.setdefault(item.metric, []).append(item)
        snapshot = Snapshot(now, {metric: tuple(items) for metric, items in by_metric.items()})
        with self._publish_lock:
            self._snapshot = snapshot

    @property
    def last_publish_time(self) -> float | None:
        snapshot = self._snapshot
        return None if snapshot is None else snapshot.time

    def metric_names(self) -> list[str]:
        """Return every metric name served now; the desired-replicas metric is always listed."""
        snapshot = self._snapshot
        names = {DESIRED_REPLICAS_METRIC}
        if snapshot is not None:
            names.update(metric for metric, items in snapshot.series.items() if items)
        return sorted(names)

    def query(self, metric: str, namespace: str, selector: LabelSelector) -> list[Series]:
        """Return the series of `metric` in `namespace` that match `selector`, all with values.

        Raise MetricNotFound when the metric or any matching series does not exist, and
        MetricUnavailable when no tick was published yet, the last one is too old, or a
        matching series has an unknown value. A partial list is never returned, because the
        HPA sums the items and would scale on an undercount.
        """
        snapshot = self._snapshot
        if snapshot is None:
            if metric == DESIRED_REPLICAS_METRIC or metric.startswith(SIGNAL_METRIC_PREFIX):
                raise MetricUnavailable(f"metric {metric} has no value yet: the controller has not published a tick")
            raise MetricNotFound(f"metric {metric} not found; served metrics: {DESIRED_REPLICAS_METRIC}")

        self._check_age(snapshot)

        if metric not in snapshot.series or not snapshot.series[metric]:
            served = ", ".join(self.metric_names())
            raise MetricNotFound(f"metric {metric} not found; served metrics: {served}")

        matching = [item for item in snapshot.series[metric] if item.namespace == namespace and selector.matches(item.labels)]
        if not matching:
            raise MetricNotFound(f"no series of metric {metric} in namespace {namespace} matches label selector {str(selector)!r}")

        unknown = [item for item in matching if item.value is None]
        if unknown:
            details = "; ".join(f"{item.target}: {item.unknown_reason}" for item in unknown)
            raise MetricUnavailable(f"metric {metric} is unknown for {len(unknown)} of {len(matching)} selected targets: {details}")
        return matching

    def _check_age(self, snapshot: Snapshot) -> None:
        if self.max_age_seconds is None:
            return
        age = self.clock() - snapshot.time
        if age > self.max_age_seconds:
            raise MetricUnavailable(
                f"the last tick was published {age:.0f} s ago, more than the maximum age of {self.max_age_seconds:g} s; "
                "check that the controller loop is running"
            )


def _series_of(now: float, decision: Decision) -> list[Series]:
    ref = TargetRef.parse(decision.target)
    labels = {
        LABEL_TARGET_KIND: ref.kind.value,
        LABEL_TARGET_NAME: ref.name,
        LABEL_RULE: decision.rule,
    }

    if decision.desired is None:
        desired = Series(DESIRED_REPLICAS_METRIC, ref.namespace, decision.target, labels, None, now, decision.reason)
    else:
        desired = Series(DESIRED_REPLICAS_METRIC, ref.namespace, decision.target, labels, str(decision.desired), now)
    series = [desired]

    for signal, sample in decision.samples.items():
        value, reason = _sample_quantity(sample)
        series.append(Series(signal_metric_name(signal), ref.namespace, decision.target, labels, value, now, reason))
    return series


def _sample_quantity(sample: Sample) -> tuple[str | None, str]:
    # An idle window (no traffic) is served as 0, which lets an HPA go to its minimum the
    # way the engine may go to the floor. An unknown sample has no value at all.
    if sample.is_unknown:
        return None, sample.reason or "the query failed"
    if sample.is_idle:
        return "0", ""
    assert sample.value is not None
    return format_quantity(sample.value), ""
