"""History mode: replay signals recorded in Prometheus through the engine, open loop.

The configured signals of every target are read over a time range with one range query per
signal group (`PrometheusSource.fetch_range`), at the configuration's tick interval. Each step
is one engine tick. The replicas start at the manifest's template values, clamped to the
rules' bounds, and each decision is taken as applied at the next tick. The recorded signals do
not react to the decisions, so the result shows what the policies would have ordered for the
traffic that happened, not what that traffic would have become.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Protocol, Sequence

from autoscaler.backtest.cluster import SimTarget, discover_targets
from autoscaler.config import Config
from autoscaler.engine import Decision, EngineState, decide, signal_requests
from autoscaler.specs import budget_limits, build_bands, build_specs
from metrics.sample import Sample, SignalRequest

SampleSeries = Mapping[str, Mapping[str, Sequence[tuple[float, Sample]]]]

# Ticks of one replay: about 17 days at a 15 s interval. Every target's samples and decision of
# each tick stay in memory, and every 10,000 ticks cost one more range query per signal group.
MAX_TICKS = 100_000


class RangeSource(Protocol):
    def fetch_range(self, requests: Sequence[SignalRequest], start: float, end: float, step: float) -> SampleSeries: ...


@dataclass
class TargetHistory:
    """The replica path one target would have followed, with its cost."""

    target: str
    gpus_per_replica: float
    replicas: list[int] = field(default_factory=list)
    scale_actions: int = 0
    unknown_ticks: int = 0


@dataclass
class HistoryReport:
    start: float
    end: float
    step: float
    times: list[float]
    targets: list[TargetHistory]
    decisions: list[Decision]
    unknown_reason: str | None = None
    """The reason of the first unknown sample, if any tick had one."""

    def gpu_hours(self, target: TargetHistory) -> float:
        """GPU-hours of the replica path, each tick's count held until the next tick."""
        return sum(target.replicas) * target.gpus_per_replica * self.step / 3600.0


def parse_time(text: str, option: str) -> float:
    """Return Unix seconds from a number or an RFC 3339 time; raise ValueError naming the option."""
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"invalid {option} {text!r}: expected Unix seconds or an RFC 3339 time such as 2025-01-31T12:00:00Z") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        value = parsed.timestamp()
    if not math.isfinite(value):
        raise ValueError(f"invalid {option} {text!r}: not a finite time")
    return value


def run_history(
    config: Config,
    manifest: Mapping[str, Any],
    source: RangeSource,
    *,
    start: float,
    end: float,
    gpus_per_pod: float = 1.0,
) -> HistoryReport:
    """Replay the recorded signals between `start` and `end` (Unix seconds) through the engine."""
    if end <= start:
        raise ValueError(f"invalid time range: end {end} is not after start {start}")
    step = config.interval_seconds
    ticks = math.floor((end - start) / step + 1e-9) + 1
    if ticks > MAX_TICKS:
        raise ValueError(f"invalid time range {start:.0f} .. {end:.0f}: {ticks} ticks of {step:g} s, more than the maximum {MAX_TICKS}")
    targets = discover_targets(config, manifest, gpus_per_pod=gpus_per_pod, require_role=False)
    if not targets:
        raise ValueError("no configuration rule selects an object of the manifest's PodCliqueSet")
    discovered = [target.discovered for target in targets]
    specs = build_specs(config, discovered)
    series = source.fetch_range(signal_requests(specs), start, end, step)

    current = {spec.target: _initial(spec, target) for spec, target in zip(specs, targets)}
    histories = {target.name: TargetHistory(target.name, target.gpus_per_replica) for target in targets}
    bands = build_bands(config, discovered)
    budgets = budget_limits(config)
    state = EngineState()
    decisions_made: list[Decision] = []
    unknown_reason: str | None = None
    times = _step_times(start, end, step)

    for index, now in enumerate(times):
        observations = {spec.target: _samples_at(series, spec.target, spec.signals(), index) for spec in specs}
        decisions, state = decide(
            now=now,
            specs=specs,
            observations=observations,
            live=dict(current),
            state=state,
            interval_seconds=step,
            bands=bands,
            budgets=budgets,
        )
        for decision in decisions:
            history = histories[decision.target]
            history.replicas.append(current[decision.target])
            unknown = [sample for sample in decision.samples.values() if sample.is_unknown]
            if unknown:
                history.unknown_ticks += 1
                if unknown_reason is None:
                    unknown_reason = unknown[0].reason
            if decision.desired is not None and decision.desired != current[decision.target]:
                history.scale_actions += 1
                current[decision.target] = decision.desired
            decisions_made.append(decision)

    return HistoryReport(
        start=start, end=end, step=step, times=times, targets=list(histories.values()), decisions=decisions_made, unknown_reason=unknown_reason
    )


def _initial(spec, target: SimTarget) -> int:
    lower = max(spec.min_replicas, spec.floor)
    return min(max(target.template_replicas, lower), spec.max_replicas)


def _step_times(start: float, end: float, step: float) -> list[float]:
    count = int(math.floor((end - start) / step + 1e-9)) + 1
    return [start + index * step for index in range(count)]


def _samples_at(series: SampleSeries, target: str, signals: Sequence[str], index: int) -> dict[str, Sample]:
    result = {}
    for signal in signals:
        points = series.get(target, {}).get(signal)
        if points is None or index >= len(points):
            result[signal] = Sample.unknown(f"no recorded sample of {signal} for {target}")
        else:
            result[signal] = points[index][1]
    return result


def format_history(report: HistoryReport) -> str:
    """Return one line per target: ticks, replica range, scale actions, GPU-hours, unknown ticks."""
    start = datetime.fromtimestamp(report.start, timezone.utc).isoformat()
    end = datetime.fromtimestamp(report.end, timezone.utc).isoformat()
    lines = [f"history {start} .. {end}, {len(report.times)} ticks of {report.step:g} s (open loop)", ""]
    header = ("target", "min", "max", "actions", "GPU-h", "ticks with unknown input")
    rows = [header]
    for target in report.targets:
        rows.append(
            (
                target.target,
                str(min(target.replicas, default=0)),
                str(max(target.replicas, default=0)),
                str(target.scale_actions),
                f"{report.gpu_hours(target):.2f}",
                str(target.unknown_ticks),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for index, row in enumerate(rows):
        lines.append("  ".join([row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def history_to_dict(report: HistoryReport) -> dict[str, Any]:
    return {
        "history": {"start": report.start, "end": report.end, "step_s": report.step, "ticks": len(report.times)},
        "targets": [
            {
                "target": target.target,
                "gpus_per_replica": target.gpus_per_replica,
                "scale_actions": target.scale_actions,
                "gpu_hours": round(report.gpu_hours(target), 6),
                "unknown_ticks": target.unknown_ticks,
                "replicas": target.replicas,
            }
            for target in report.targets
        ],
        "decisions": [decision.to_record() for decision in report.decisions],
    }
