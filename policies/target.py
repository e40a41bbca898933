"""`target`: target tracking on any signal, with the HPA's external-metric arithmetic.

The metric is the target's value of the signal as the catalog defines it (for example the
p90 inter-token latency of the target, or its total request rate). The arithmetic follows
the HPA replica calculator (pkg/controller/podautoscaler/replica_calculator.go):

- `Value`: ratio = metric / value. Inside the tolerance band the count stays. Otherwise
  desired = ceil(ratio * ready replicas), falling back to the live count when readiness is
  not reported or no replica is ready. With 0 live replicas the basis is one replica,
  desired = ceil(ratio), as the HPA computes a scale from zero.
- `AverageValue`: ratio = metric / (value * live replicas). Inside the tolerance band the
  count stays. Otherwise desired = ceil(metric / value), which also covers 0 live replicas.

The band is inclusive: the count stays while 1 - scale_down_tolerance <= ratio <= 1 +
scale_up_tolerance. Both default to `tolerance`.

Two deviations from the HPA: when replicas are live but none is ready, the HPA's Value
arithmetic yields 0 while this policy uses the live count, and `ceil_replicas` does not let
float noise (137.00000000000003) add a replica.

The helpers below are shared by the other built-in policies.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator

from policies.base import Desire, PolicyContext, PolicyParams, PolicyResult

SIGNAL_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")

# Kubernetes stores replicas as int32, so no larger desire can ever be written.
MAX_DESIRED_REPLICAS = 2**31 - 1


def validate_signal_name(value: str) -> str:
    """Return `value` if it has the shape of a signal name; raise ValueError otherwise."""
    if not SIGNAL_NAME_PATTERN.match(value):
        raise ValueError(
            f"invalid signal name {value!r}: use letters, digits and _ . : - and start with a letter or _"
        )
    return value


def format_number(value: float) -> str:
    """Format a metric value for a reason string: three significant digits, no exponent below 1e6."""
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.3g}"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.3g}"


def read_sample_value(context: PolicyContext, signal: str) -> float | Desire:
    """Return the finite, non-negative value of `signal`, or the idle or unknown desire to return."""
    sample = context.samples.get(signal)
    if sample is None:
        return Desire.unknown(f"no sample for signal {signal}")
    if sample.is_idle:
        return Desire.idle(f"{signal}: {sample.reason or 'idle window'}")
    if not sample.is_value:
        return Desire.unknown(f"{signal}: {sample.reason or 'unknown value'}")

    value = sample.value
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return Desire.unknown(f"{signal} has no finite value (got {value!r})")
    if value < 0:
        return Desire.unknown(f"{signal} is negative ({format_number(value)}); expected a value >= 0")
    return float(value)


def replica_basis(context: PolicyContext) -> int:
    """Return the ready replicas when reported and above zero, else the live count, and at least 1."""
    ready = context.ready_replicas
    if ready is not None and ready > 0:
        return ready
    return max(context.current_replicas, 1)


# Relative slack for float noise: ratio * replicas can come out as 137.00000000000003 when
# the exact product is 137, and a plain ceil would then add a replica.
CEIL_SLACK = 1e-9


def ceil_replicas(value: float) -> int:
    """Round a desired count up, capped at the largest count Kubernetes can store.

    A value at most CEIL_SLACK (relative) above an integer rounds to that integer.
    """
    if value >= MAX_DESIRED_REPLICAS:
        return MAX_DESIRED_REPLICAS
    return max(math.ceil(value - abs(value) * CEIL_SLACK), 0)


@dataclass(frozen=True)
class Tolerances:
    """The inclusive band around ratio 1 inside which the count stays."""

    scale_up: float
    scale_down: float

    def contain(self, ratio: float) -> bool:
        return 1 - self.scale_down <= ratio <= 1 + self.scale_up


class TargetParams(PolicyParams):
    signal: str = Field(description="catalog or custom signal name, e.g. itl_p90 or request_rate")
    type: Literal["Value", "AverageValue"] = Field(
        description="Value: the metric itself tracks `value`. AverageValue: the metric divided by the live replicas tracks it"
    )
    value: float = Field(gt=0, allow_inf_nan=False, description="target value, in the unit of the signal")
    tolerance: float = Field(default=0.1, ge=0, lt=1, description="relative band around the target in both directions")
    scale_up_tolerance: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="band above the target; defaults to tolerance"
    )
    scale_down_tolerance: float | None = Field(
        default=None, ge=0, lt=1, description="band below the target; defaults to tolerance"
    )

    @field_validator("signal")
    @classmethod
    def _check_signal(cls, value: str) -> str:
        return validate_signal_name(value)

    def tolerances(self) -> Tolerances:
        scale_up = self.tolerance if self.scale_up_tolerance is None else self.scale_up_tolerance
        scale_down = self.tolerance if self.scale_down_tolerance is None else self.scale_down_tolerance
        return Tolerances(scale_up=scale_up, scale_down=scale_down)


class TargetPolicy:
    """Keep a signal at a target value with the arithmetic of an HPA external metric."""

    name = "target"
    Params = TargetParams

    def __init__(self, params: TargetParams) -> None:
        self.params = params

    def signals(self) -> list[str]:
        return [self.params.signal]

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        metric = read_sample_value(context, self.params.signal)
        if isinstance(metric, Desire):
            return PolicyResult(metric)
        if self.params.type == "Value":
            return PolicyResult(self._track_value(context, metric))
        return PolicyResult(self._track_average_value(context, metric))

    def _track_value(self, context: PolicyContext, metric: float) -> Desire:
        current = context.current_replicas
        ratio = metric / self.params.value
        reason = f"{self.params.signal} {describe_ratio(metric, self.params.value, ratio)}"

        if current == 0:
            desired = ceil_replicas(ratio)
            return Desire.scale_to(desired, f"{reason} with 0 replicas: scale from zero to {desired}")
        if self.params.tolerances().contain(ratio):
            return Desire.scale_to(current, f"{reason}: inside tolerance, keep {current}")
        return Desire.scale_to(ceil_replicas(ratio * replica_basis(context)), reason)

    def _track_average_value(self, context: PolicyContext, metric: float) -> Desire:
        signal, target = self.params.signal, self.params.value
        current = context.current_replicas
        desired = ceil_replicas(metric / target)

        if current == 0:
            reason = f"{signal} {format_number(metric)} with 0 replicas, target {format_number(target)} per replica"
            return Desire.scale_to(desired, reason)
        ratio = metric / (target * current)
        per_replica = describe_ratio(metric / current, target, ratio, unit=" per replica")
        reason = f"{signal} {format_number(metric)} over {current} replicas = {per_replica}"
        if self.params.tolerances().contain(ratio):
            return Desire.scale_to(current, f"{reason}: inside tolerance, keep {current}")
        return Desire.scale_to(desired, reason)


def describe_ratio(value: float, target: float, ratio: float, *, unit: str = "", label: str = "target") -> str:
    """Return e.g. "0.062 > target 0.05 (ratio 1.24)" for reason strings; `unit` follows the value."""
    if ratio > 1:
        sign = ">"
    elif ratio < 1:
        sign = "<"
    else:
        sign = "="
    ratio_text = f"{ratio:.2f}" if ratio < 1000 else format_number(ratio)
    return f"{format_number(value)}{unit} {sign} {label} {format_number(target)} (ratio {ratio_text})"
