"""Run policy sets against one workload on the simulated cluster and score them.

Each policy set gets a fresh simulated cluster and serving model. Every `intervalSeconds` of
simulated time the runner computes the signals that the set's policies declared and calls the
same `autoscaler.engine.decide` as the live controller. It then applies each decision's desired
replicas to the simulated `/scale`: new replicas serve after the cold start, and removed ones
drain. Only the clock, the metric source and the scale writer differ from the live loop.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from autoscaler.backtest.baselines import PolicySet
from autoscaler.backtest.cluster import Topology, build_topology
from autoscaler.backtest.oracle import OracleResult
from autoscaler.backtest.serving_events import EventServingModel
from autoscaler.backtest.serving_fluid import FluidServingModel
from autoscaler.backtest.signals import DECODE, ITL_BUCKETS, PREFILL, ROLES, TTFT_BUCKETS, histogram_quantile_rows, window_sums
from autoscaler.backtest.traces import RateShape, Trace
from autoscaler.engine import EngineState, decide
from autoscaler.specs import budget_limits, build_bands, build_specs
from policies.profile import Profile

logger = logging.getLogger(__name__)

MODES = ("request", "fluid")


@dataclass(frozen=True)
class Settings:
    """Backtest parameters shared by every policy set (seconds unless named otherwise)."""

    ttft_slo_s: float = 0.5
    itl_slo_s: float = 0.05
    cold_start_s: float = 120.0
    mode: str = "request"
    gpus_per_pod: float = 1.0
    gpus_per_engine: float = 1.0
    step_s: float = 1.0
    drain_s: float = 600.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("ttft_slo_s", "itl_slo_s", "step_s", "gpus_per_pod", "gpus_per_engine"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"invalid {name} {value!r}: must be a positive number")
        if not math.isfinite(self.cold_start_s) or self.cold_start_s < 0:
            raise ValueError(f"invalid cold start {self.cold_start_s!r}: must be >= 0 seconds")
        if self.mode not in MODES:
            raise ValueError(f"invalid mode {self.mode!r}: expected one of {', '.join(MODES)}")


@dataclass(frozen=True)
class Workload:
    """A request-level trace, or a rate shape with a trace to draw request lengths from."""

    name: str
    duration_s: float
    trace: Trace | None = None
    shape: RateShape | None = None
    lengths: Trace | None = None

    @property
    def requests(self) -> int:
        if self.trace is not None:
            return self.trace.requests
        assert self.shape is not None
        return int(round(float(np.sum(self.shape.rate * self.shape.window_s))))


@dataclass
class Timeline:
    """Values at every tick: live replicas per role, GPUs held, load and latency signals."""

    time_s: list[float] = field(default_factory=list)
    replicas: dict[str, list[int]] = field(default_factory=lambda: {role: [] for role in ROLES})
    gpus: list[float] = field(default_factory=list)
    request_rate: list[float] = field(default_factory=list)
    ttft_p90: list[float] = field(default_factory=list)
    itl_p90: list[float] = field(default_factory=list)


@dataclass
class PolicyOutcome:
    policy: str
    attainment: float
    ttft_attainment: float
    itl_attainment: float
    gpu_hours: float
    oracle_ratio: float
    scale_actions: int
    peak_gpus: float
    timeline: Timeline
    unfinished: int = 0


@dataclass
class BacktestReport:
    workload: Workload
    settings: Settings
    oracle: OracleResult
    results: list[PolicyOutcome]
    warnings: list[str] = field(default_factory=list)


class Progress:
    """A progress bar on stderr, shown only once a run has taken more than `delay_s` seconds."""

    def __init__(self, total: float, *, stream=None, delay_s: float = 2.0, width: int = 30) -> None:
        self.total = max(total, 1e-9)
        self.stream = stream if stream is not None else sys.stderr
        self.delay_s = delay_s
        self.width = width
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.shown = False

    def update(self, done: float, label: str) -> None:
        now = time.monotonic()
        if now - self.started < self.delay_s or now - self.last_draw < 0.2:
            return
        self.last_draw = now
        self.shown = True
        fraction = min(1.0, done / self.total)
        filled = int(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\rbacktest [{bar}] {fraction * 100:5.1f}% {label[:40]:<40}")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def run_backtest(
    workload: Workload,
    policy_sets: Sequence[PolicySet],
    profile: Profile,
    manifest: Mapping,
    settings: Settings,
    oracle: OracleResult,
    *,
    show_progress: bool = True,
) -> BacktestReport:
    """Backtest every policy set on the workload; the oracle divides every GPU-hour figure."""
    progress = Progress(total_ticks(workload, policy_sets, settings)) if show_progress else None
    done = 0.0
    results = []
    for policy_set in policy_sets:

        def tick(count: float, name: str = policy_set.name) -> None:
            nonlocal done
            done += count
            if progress is not None:
                progress.update(done, name)

        results.append(run_policy_set(workload, policy_set, profile, manifest, settings, oracle, on_tick=tick))
    if progress is not None:
        progress.close()
    return BacktestReport(workload=workload, settings=settings, oracle=oracle, results=results)


def total_ticks(workload: Workload, policy_sets: Sequence[PolicySet], settings: Settings) -> float:
    return sum(_horizon(workload, settings) / ps.config.interval_seconds for ps in policy_sets)


def run_policy_set(
    workload: Workload,
    policy_set: PolicySet,
    profile: Profile,
    manifest: Mapping,
    settings: Settings,
    oracle: OracleResult,
    *,
    on_tick: Callable[[float], None] | None = None,
) -> PolicyOutcome:
    """Simulate one policy set over the workload and score it; `on_tick` gets the ticks done."""
    config = policy_set.config
    topology = build_topology(config, manifest, gpus_per_pod=settings.gpus_per_pod)
    discovered = [target.discovered for target in topology.targets]
    specs = build_specs(config, discovered)
    bands = build_bands(config, discovered)
    budgets = budget_limits(config)
    role_of = {target.name: target.role for target in topology.targets}
    spec_by_role = {role_of[spec.target]: spec for spec in specs}

    initial = {}
    for role in ROLES:
        spec = spec_by_role[role]
        target = topology.by_role(role)
        if policy_set.static_replicas is not None:
            initial[role] = int(policy_set.static_replicas[role])
        else:
            lower = max(spec.min_replicas, spec.floor)
            initial[role] = min(max(target.template_replicas, lower), spec.max_replicas)

    horizon = _horizon(workload, settings)
    interval = config.interval_seconds
    window = float(config.metrics.window_seconds)
    model = _make_model(workload, profile, topology, initial, settings, horizon, _record_step(settings, interval, window))
    signals = {spec.target: spec.signals() for spec in specs}
    timeline = Timeline()
    state = EngineState()
    actions = 0

    ticks = int(math.floor(horizon / interval + 1e-9))
    for tick in range(1, ticks + 1):
        now = tick * interval
        model.advance(now)
        live = {spec.target: model.live_replicas(role_of[spec.target]) for spec in specs}
        if policy_set.static_replicas is None:
            observations = {
                spec.target: model.recorder.samples(now, window, role_of[spec.target], signals[spec.target]) for spec in specs
            }
            ready = {spec.target: model.ready_replicas(role_of[spec.target], now) for spec in specs}
            decisions, state = decide(
                now=now,
                specs=specs,
                observations=observations,
                live=live,
                ready=ready,
                state=state,
                interval_seconds=interval,
                bands=bands,
                budgets=budgets,
            )
            for decision in decisions:
                role = role_of[decision.target]
                if decision.desired is not None and decision.desired != live[decision.target]:
                    model.scale(role, decision.desired, now)
                    actions += 1
        _record_tick(timeline, model, now)
        if on_tick is not None:
            on_tick(1.0)
        if now >= workload.duration_s and model.pending == 0:
            if on_tick is not None:
                on_tick(float(ticks - tick))
            break

    return _score(policy_set.name, model, workload, settings, oracle, timeline, actions)


def _horizon(workload: Workload, settings: Settings) -> float:
    return workload.duration_s + (settings.drain_s if settings.mode == "request" else 0.0)


def _record_step(settings: Settings, interval: float, window: float) -> float:
    """Return the recorder step: the request model's step, or for the fluid model the largest
    whole number of seconds that divides both the tick interval and the signal window."""
    if settings.mode == "request" or interval != int(interval):
        return settings.step_s
    return float(max(1, math.gcd(int(interval), int(window))))


def _make_model(workload: Workload, profile: Profile, topology: Topology, initial, settings: Settings, horizon: float, step_s: float):
    common = dict(
        profile=profile,
        prefill_gpus=topology.by_role(PREFILL).gpus_per_replica,
        decode_gpus=topology.by_role(DECODE).gpus_per_replica,
        initial_prefill=initial[PREFILL],
        initial_decode=initial[DECODE],
        cold_start_s=settings.cold_start_s,
        horizon_s=horizon,
        step_s=step_s,
        gpus_per_engine=settings.gpus_per_engine,
    )
    if settings.mode == "request":
        if workload.trace is None:
            raise ValueError("request mode needs a request-level trace; use --mode fluid for a rate shape")
        return EventServingModel(trace=workload.trace, **common)
    return FluidServingModel(
        shape=workload.shape,
        trace=workload.trace,
        lengths=workload.lengths if workload.lengths is not None else workload.trace,
        duration_s=workload.duration_s,
        ttft_slo_s=settings.ttft_slo_s,
        itl_slo_s=settings.itl_slo_s,
        **common,
    )


def _record_tick(timeline: Timeline, model, now: float) -> None:
    timeline.time_s.append(now)
    timeline.replicas[PREFILL].append(model.prefill.live_count)
    timeline.replicas[DECODE].append(model.decode.live_count)


def _complete_timeline(timeline: Timeline, model) -> None:
    """Fill GPUs, request rate and latency p90s of every tick from the recorder, over 60 s windows."""
    times = np.array(timeline.time_s)
    gpus = np.zeros(times.size)
    for pool in (model.prefill, model.decode):
        gpus += pool.count_timeline(times) * pool.gpus_per_replica
    timeline.gpus = gpus.tolist()
    recorder = model.recorder
    ends = np.rint(times / recorder.step_s).astype(np.int64)
    width = max(1, int(round(60.0 / recorder.step_s)))
    seconds = np.minimum(ends, width) * recorder.step_s
    with np.errstate(invalid="ignore", divide="ignore"):
        timeline.request_rate = (window_sums(recorder.arrivals, ends, width) / seconds).tolist()
    timeline.ttft_p90 = histogram_quantile_rows(0.9, TTFT_BUCKETS, window_sums(recorder.ttft, ends, width)).tolist()
    timeline.itl_p90 = histogram_quantile_rows(0.9, ITL_BUCKETS, window_sums(recorder.itl, ends, width)).tolist()


def _value(sample) -> float:
    return float(sample.value) if sample.is_value else math.nan


def _score(name: str, model, workload: Workload, settings: Settings, oracle: OracleResult, timeline: Timeline, actions: int) -> PolicyOutcome:
    _complete_timeline(timeline, model)
    attainment, ttft_attainment, itl_attainment = model.attainment(settings.ttft_slo_s, settings.itl_slo_s)
    gpu_hours = model.gpu_seconds(workload.duration_s) / 3600.0
    peak = _peak_gpus(model, workload.duration_s)
    return PolicyOutcome(
        policy=name,
        attainment=attainment,
        ttft_attainment=ttft_attainment,
        itl_attainment=itl_attainment,
        gpu_hours=gpu_hours,
        oracle_ratio=gpu_hours / oracle.gpu_hours if oracle.gpu_hours > 0 else math.nan,
        scale_actions=actions,
        peak_gpus=peak,
        timeline=timeline,
        unfinished=model.pending,
    )


def _peak_gpus(model, end: float) -> float:
    # The count only rises when a replica is created, so the peak is at a creation time.
    peak = 0.0
    times = sorted({replica.created for pool in (model.prefill, model.decode) for replica in pool.replicas if replica.created <= end})
    times_array = np.array(times)
    total = np.zeros(times_array.size)
    for pool in (model.prefill, model.decode):
        total += pool.count_timeline(times_array) * pool.gpus_per_replica
    if total.size:
        peak = float(total.max())
    return peak
