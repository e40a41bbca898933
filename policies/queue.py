"""`queue`: keep the waiting requests per replica at a target, and detect stuck queues.

The signal is the number of requests waiting for admission, summed over the target's
replicas. Like an HPA AverageValue target: ratio = waiting / (target * live replicas);
inside the tolerance band the count stays, otherwise desired = ceil(waiting / target).
An empty queue proposes 0 (the engine raises it to the minimum), because a queue
carries no information about the load that is already admitted.

A queue that neither drains nor makes progress while replicas are up is not demand: a hung
engine or requests that can never be admitted would otherwise hold replicas forever.
`StuckQueue` tracks that condition; after `stuck_seconds` the policy stops voting for
replicas. The tracker is shared with `kv-spare` and `sla-planner`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from pydantic import Field, field_validator

from metrics.sample import Sample
from policies.base import Desire, DesireKind, PolicyContext, PolicyParams, PolicyResult
from policies.target import (
    Tolerances,
    ceil_replicas,
    describe_ratio,
    format_number,
    read_sample_value,
    validate_signal_name,
)


@dataclass
class StuckQueue:
    """How long requests have waited while no progress was made.

    `since` is the time the queue stopped draining (None while it drains or is empty), and
    `level` the waiting count at that time. A lower count later counts as draining.
    """

    since: float | None = None
    level: float = 0.0

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> StuckQueue:
        """Resume from `to_state()` output; a malformed value starts a new tracker."""
        if not state:
            return cls()
        try:
            since = state.get("since")
            return cls(None if since is None else float(since), float(state.get("level", 0.0)))
        except (TypeError, ValueError):
            return cls()

    def to_state(self) -> dict[str, Any]:
        return {"since": self.since, "level": self.level}

    def update(self, now: float, waiting: float | None, progress: bool | None) -> None:
        """Record one tick: `waiting` requests (None if unknown) and whether work progressed (None if unknown).

        Unknown inputs end a stuck period, so a missing signal never removes a scale-up vote.
        """
        if waiting is None or progress is None or waiting <= 0 or progress:
            self.since = None
            self.level = 0.0
            return
        if self.since is None or waiting < self.level:
            self.since = now
            self.level = waiting

    def stuck_for(self, now: float) -> float:
        """Return the seconds the queue has been stuck, 0 when it is not."""
        return 0.0 if self.since is None else max(0.0, now - self.since)


# A mean computed as a difference of sums (queue time = TTFT - service time) can come out a few
# ULPs below zero when every term is 0. Such a value is 0, not a broken series.
ROUNDING_TOLERANCE = 1e-9


def optional_value(sample: Sample | None) -> float | None:
    """Return a sample's value, 0 for an idle window, and None when unknown, negative or non-finite.

    A value between -`ROUNDING_TOLERANCE` and 0 is rounding noise and returns 0.
    """
    if sample is None or sample.is_unknown:
        return None
    if sample.is_idle:
        return 0.0
    value = sample.value
    if value is None or not math.isfinite(value) or value < -ROUNDING_TOLERANCE:
        return None
    return max(0.0, float(value))


def block_scale_down(desire: Desire, current: int, unknown: list[str]) -> Desire:
    """Return `desire` unless inputs are unknown and it would go below `current`; then return unknown."""
    if not unknown or desire.kind is DesireKind.UNKNOWN:
        return desire
    if desire.kind is DesireKind.REPLICAS and desire.replicas is not None and desire.replicas >= current:
        return desire
    return Desire.unknown(f"{', '.join(unknown)} unknown: scale-down blocked ({desire.reason})")


def serving_replicas(context: PolicyContext) -> int:
    """Return the replicas that can make progress: the ready count when reported, else the live count."""
    if context.ready_replicas is not None:
        return context.ready_replicas
    return context.current_replicas


class QueueParams(PolicyParams):
    target_waiting_per_replica: float = Field(
        default=2.0, gt=0, allow_inf_nan=False, description="waiting requests per replica to keep, on average"
    )
    signal: str = Field(default="requests_waiting", description="signal with the waiting requests summed over replicas")
    tolerance: float = Field(default=0.1, ge=0, lt=1, description="relative band around the target in both directions")
    stuck_seconds: float | None = Field(
        default=300.0,
        gt=0,
        allow_inf_nan=False,
        description="seconds a queue may stay without draining at zero throughput before it stops counting; null disables",
    )
    throughput_signal: str = Field(
        default="decode_throughput", description="signal whose value 0 means no progress (output tokens/s)"
    )

    @field_validator("signal", "throughput_signal")
    @classmethod
    def _check_signal(cls, value: str) -> str:
        return validate_signal_name(value)


class QueuePolicy:
    """Scale so that each replica has about `target_waiting_per_replica` requests waiting."""

    name = "queue"
    Params = QueueParams

    def __init__(self, params: QueueParams) -> None:
        self.params = params

    def signals(self) -> list[str]:
        if self.params.stuck_seconds is None:
            return [self.params.signal]
        return [self.params.signal, self.params.throughput_signal]

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        waiting = read_sample_value(context, self.params.signal)
        stuck = self._track_stuck(context, waiting)
        state = {"stuck": stuck.to_state()}
        desire = waiting if isinstance(waiting, Desire) else self._decide(context, waiting, stuck)
        unknown = []
        if self.params.stuck_seconds is not None and optional_value(context.samples.get(self.params.throughput_signal)) is None:
            unknown.append(self.params.throughput_signal)
        return PolicyResult(block_scale_down(desire, context.current_replicas, unknown), state)

    def _track_stuck(self, context: PolicyContext, waiting: float | Desire) -> StuckQueue:
        stuck = StuckQueue.from_state(context.state.get("stuck"))
        if self.params.stuck_seconds is None:
            return stuck
        throughput = optional_value(context.samples.get(self.params.throughput_signal))
        # Zero throughput is only a fault while some replica is ready to produce tokens.
        progress = None if throughput is None else (throughput > 0 or serving_replicas(context) == 0)
        stuck.update(context.now, None if isinstance(waiting, Desire) else waiting, progress)
        return stuck

    def _decide(self, context: PolicyContext, waiting: float, stuck: StuckQueue) -> Desire:
        signal, target = self.params.signal, self.params.target_waiting_per_replica
        current = context.current_replicas
        desired = ceil_replicas(waiting / target)

        stuck_seconds = self.params.stuck_seconds
        if stuck_seconds is not None and current > 0 and stuck.stuck_for(context.now) >= stuck_seconds:
            return Desire.scale_to(
                0,
                f"{signal} {format_number(waiting)} has not drained for {stuck.stuck_for(context.now):.0f}s "
                f"with {self.params.throughput_signal} 0: stuck queue, not counted as demand",
            )
        if current == 0:
            return Desire.scale_to(desired, f"{signal} {format_number(waiting)} with 0 replicas, target {format_number(target)} per replica")

        ratio = waiting / (target * current)
        reason = f"{signal} {format_number(waiting)} over {current} replicas = " + describe_ratio(
            waiting / current, target, ratio, unit=" per replica"
        )
        if waiting > 0 and Tolerances(self.params.tolerance, self.params.tolerance).contain(ratio):
            return Desire.scale_to(current, f"{reason}: inside tolerance, keep {current}")
        return Desire.scale_to(desired, reason)
