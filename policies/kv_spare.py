"""`kv-spare`: keep spare KV-cache and queue capacity on the replicas that are not saturated.

The rules follow the saturation logic of the llm-d workload variant autoscaler:

- a replica is saturated at KV-cache usage >= `kv_saturation` (0.8) or at >=
  `queue_saturation` (5) waiting requests, and a saturated replica has no spare capacity;
- scale up when the mean spare KV (saturation level minus usage) of the non-saturated
  replicas is below `min_spare_kv` (0.10), or their mean spare queue is below
  `min_spare_queue` (3), or every replica is saturated;
- scale down only with at least `min_non_saturated_for_scale_down` (2) non-saturated
  replicas, and only to a count whose replicas keep that spare with the load spread over
  them, less `scale_down_headroom` so that noise around a boundary does not flap.

The catalog provides aggregates, not per-replica values: the mean and the maximum KV usage
and the summed waiting and running requests. The policy therefore assumes the load is spread
evenly, which a KV-aware router aims for. It uses the maximum to find one hot replica: with
usage_max at or above the saturation level, one replica counts as saturated, and its usage is
taken out of the mean of the others. The count it proposes is the smallest N whose replicas,
sharing the summed KV usage and queue, keep the minimum spare (at least one more replica when
a rule above fires).
NOTE: a queue or KV load concentrated on one replica below the saturation level is not
visible in these aggregates, so it counts as spread evenly.

Zero running and zero waiting requests is an idle window (the target may go to its floor).
A queue that neither drains nor produces tokens for `stuck_seconds` stops counting, so a
hung engine cannot hold replicas forever. An unknown input blocks scale-down; the policy
still proposes a scale-up that the known inputs call for.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, field_validator, model_validator

from metrics.sample import Sample
from policies.base import Desire, PolicyContext, PolicyParams, PolicyResult
from policies.queue import StuckQueue, block_scale_down, optional_value, serving_replicas
from policies.target import ceil_replicas, format_number, validate_signal_name

KV_SIGNAL = "kv_cache_usage"
KV_MAX_SIGNAL = "kv_cache_usage_max"
WAITING_SIGNAL = "requests_waiting"
THROUGHPUT_SIGNAL = "decode_throughput"

# Rounding in a mean of values <= 1 can land a hair above 1.
USAGE_EPSILON = 1e-9


class KvSpareParams(PolicyParams):
    kv_saturation: float = Field(default=0.8, gt=0, le=1, description="KV-cache usage at which a replica is saturated")
    queue_saturation: float = Field(default=5, gt=0, allow_inf_nan=False, description="waiting requests at which a replica is saturated")
    min_spare_kv: float = Field(default=0.10, ge=0, lt=1, description="scale up below this mean spare KV usage")
    min_spare_queue: float = Field(default=3, ge=0, allow_inf_nan=False, description="scale up below this mean spare queue")
    min_non_saturated_for_scale_down: int = Field(default=2, ge=1, description="non-saturated replicas needed to scale down")
    scale_down_headroom: float = Field(
        default=0.1, ge=0, lt=1, description="relative margin below the scale-up limits that a scale-down must keep"
    )
    stuck_seconds: float | None = Field(
        default=300.0,
        gt=0,
        allow_inf_nan=False,
        description="seconds a queue may stay without draining at zero throughput before it stops counting; null disables",
    )
    running_signal: str = Field(
        default="requests_running",
        description="requests being served, summed over replicas (requests_inflight for the dynamo preset)",
    )

    @field_validator("running_signal")
    @classmethod
    def _check_signal(cls, value: str) -> str:
        return validate_signal_name(value)

    @model_validator(mode="after")
    def _check_spare(self) -> KvSpareParams:
        if self.min_spare_kv >= self.kv_saturation:
            raise ValueError(f"min_spare_kv {self.min_spare_kv} must be below kv_saturation {self.kv_saturation}")
        if self.min_spare_queue >= self.queue_saturation:
            raise ValueError(f"min_spare_queue {self.min_spare_queue} must be below queue_saturation {self.queue_saturation}")
        return self

    @property
    def kv_limit(self) -> float:
        """Highest mean KV usage per replica that still leaves the minimum spare."""
        return self.kv_saturation - self.min_spare_kv

    @property
    def queue_limit(self) -> float:
        """Highest mean waiting requests per replica that still leaves the minimum spare."""
        return self.queue_saturation - self.min_spare_queue


@dataclass(frozen=True)
class Load:
    """The target's load this tick; None marks an unknown input."""

    kv_mean: float | None
    kv_max: float | None
    waiting: float | None
    running: float | None

    def unknown_inputs(self, running_signal: str) -> list[str]:
        names = {KV_SIGNAL: self.kv_mean, KV_MAX_SIGNAL: self.kv_max, WAITING_SIGNAL: self.waiting, running_signal: self.running}
        return [name for name, value in names.items() if value is None]


class KvSparePolicy:
    """Keep spare KV-cache and queue capacity, llm-d style, with stuck-queue detection."""

    name = "kv-spare"
    Params = KvSpareParams

    def __init__(self, params: KvSpareParams) -> None:
        self.params = params

    def signals(self) -> list[str]:
        names = [KV_SIGNAL, KV_MAX_SIGNAL, WAITING_SIGNAL, self.params.running_signal]
        if self.params.stuck_seconds is not None:
            names.append(THROUGHPUT_SIGNAL)
        return names

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        load = Load(
            kv_mean=_usage(context.samples.get(KV_SIGNAL)),
            kv_max=_usage(context.samples.get(KV_MAX_SIGNAL)),
            waiting=optional_value(context.samples.get(WAITING_SIGNAL)),
            running=optional_value(context.samples.get(self.params.running_signal)),
        )
        stuck = StuckQueue.from_state(context.state.get("stuck"))
        if self.params.stuck_seconds is not None:
            throughput = optional_value(context.samples.get(THROUGHPUT_SIGNAL))
            progress = None if throughput is None else (throughput > 0 or serving_replicas(context) == 0)
            stuck.update(context.now, load.waiting, progress)

        unknown = load.unknown_inputs(self.params.running_signal)
        if self.params.stuck_seconds is not None and optional_value(context.samples.get(THROUGHPUT_SIGNAL)) is None:
            unknown.append(THROUGHPUT_SIGNAL)
        desire = block_scale_down(self._decide(context, load, stuck), context.current_replicas, unknown)
        return PolicyResult(desire, {"stuck": stuck.to_state()})

    def _decide(self, context: PolicyContext, load: Load, stuck: StuckQueue) -> Desire:
        current = context.current_replicas
        unknown = load.unknown_inputs(self.params.running_signal)
        stuck_seconds = self.params.stuck_seconds
        queue_stuck = stuck_seconds is not None and current > 0 and stuck.stuck_for(context.now) >= stuck_seconds
        waiting = 0.0 if queue_stuck else load.waiting
        stuck_note = f"; {WAITING_SIGNAL} {format_number(load.waiting or 0)} stuck, not counted" if queue_stuck else ""

        if waiting == 0 and (load.running == 0 or (load.running is None and load.kv_mean == 0)):
            return Desire.idle(f"no request running or waiting{stuck_note}")
        if current == 0:
            return self._scale_from_zero(load, waiting, unknown)

        proposal = self._propose(current, load, waiting)
        reason = proposal.reason + stuck_note
        if queue_stuck and proposal.replicas > current:
            return Desire.scale_to(current, f"{reason}; stuck queue: no scale-up vote")
        if unknown:
            note = f"{', '.join(unknown)} unknown"
            if proposal.replicas > current:
                return Desire.scale_to(proposal.replicas, f"{reason} ({note})")
            return Desire.unknown(f"{note}: scale-down blocked ({reason})")
        return Desire.scale_to(proposal.replicas, reason)

    def _scale_from_zero(self, load: Load, waiting: float | None, unknown: list[str]) -> Desire:
        if waiting and waiting > 0:
            desired = max(1, ceil_replicas(waiting / self.params.queue_limit))
            return Desire.scale_to(desired, f"{WAITING_SIGNAL} {format_number(waiting)} with 0 replicas")
        if unknown:
            return Desire.unknown(f"0 replicas and {', '.join(unknown)} unknown")
        return Desire.scale_to(1, "requests running with 0 replicas reported")

    def _propose(self, current: int, load: Load, waiting: float | None) -> _Proposal:
        params = self.params
        replicas = max(current, 1)
        kv_mean = load.kv_mean or 0.0
        kv_max = load.kv_max if load.kv_max is not None else kv_mean
        waiting_per_replica = (waiting or 0.0) / replicas

        saturated = _saturated_estimate(replicas, kv_mean, kv_max, waiting_per_replica, params)
        non_saturated = replicas - saturated
        if non_saturated > 0:
            spare_kv = params.kv_saturation - max(0.0, (replicas * kv_mean - saturated * kv_max) / non_saturated)
        else:
            spare_kv = 0.0
        spare_queue = params.queue_saturation - waiting_per_replica
        summary = (
            f"{saturated}/{replicas} saturated, spare kv {spare_kv:.2f} (min {format_number(params.min_spare_kv)}), "
            f"spare queue {format_number(spare_queue)} (min {format_number(params.min_spare_queue)})"
        )

        needed_kv = replicas * kv_mean / params.kv_limit
        needed_queue = (waiting or 0.0) / params.queue_limit
        if non_saturated == 0 or spare_kv < params.min_spare_kv or spare_queue < params.min_spare_queue:
            desired = max(current + 1, ceil_replicas(max(needed_kv, needed_queue)))
            return _Proposal(desired, f"{summary}: scale up to {desired}")

        if non_saturated < params.min_non_saturated_for_scale_down:
            needs = params.min_non_saturated_for_scale_down
            return _Proposal(current, f"{summary}: keep {current}, scale-down needs {needs} non-saturated replicas")
        keep = 1 - params.scale_down_headroom
        candidate = max(1, ceil_replicas(max(needed_kv, needed_queue) / keep))
        if candidate < current:
            return _Proposal(candidate, f"{summary}: {candidate} replicas keep the spare, scale down")
        return _Proposal(current, f"{summary}: keep {current}")


@dataclass(frozen=True)
class _Proposal:
    replicas: int
    reason: str


def _usage(sample: Sample | None) -> float | None:
    value = optional_value(sample)
    if value is None or value > 1 + USAGE_EPSILON:
        # A usage above 1 usually means a percentage; treating it as unknown blocks scale-down.
        return None
    return min(value, 1.0)


def _saturated_estimate(replicas: int, kv_mean: float, kv_max: float, waiting_per_replica: float, params: KvSpareParams) -> int:
    """Return how many replicas count as saturated under the even-spread assumption."""
    if kv_mean >= params.kv_saturation or waiting_per_replica >= params.queue_saturation:
        return replicas
    if kv_max >= params.kv_saturation:
        return 1
    return 0
