"""`latency-slo`: keep a latency signal (TTFT, ITL, queue time, end-to-end) under its SLO.

Model: latency is roughly proportional to the load per replica, so with the same traffic on
n replicas instead of B the latency becomes observed * B / n. B is the number of replicas
that produced the observation: the ready replicas when reported and above zero, else the
live count. With 0 live replicas but a value in the window, B is 1.

- Above the band (observed > slo * (1 + tolerance)): desired = ceil(B * observed / slo), and
  never below the live count, so replicas that are still starting are not removed while the
  SLO is missed.
- Below the band (observed < slo * (1 - tolerance)): scale down to the smallest n whose
  estimated latency observed * B / n stays at or under the SLO, and only if that n is below
  the live count. This check prevents the flapping of a flat threshold: removing one
  replica would push the latency of the rest over the SLO, so the next tick would add it
  back. A value never scales below 1 replica. Only an idle window lets a target reach 0.
- Inside the band the count stays.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from policies.base import Desire, PolicyContext, PolicyParams, PolicyResult
from policies.target import ceil_replicas, describe_ratio, format_number, read_sample_value, replica_basis

LATENCY_SIGNAL_PATTERN = re.compile(r"^(ttft|itl|queue_time|e2e)(_[A-Za-z0-9]+)*$")


class LatencySloParams(PolicyParams):
    signal: str = Field(description="latency signal in seconds: ttft_*, itl_*, queue_time_* or e2e_*, e.g. ttft_p90")
    slo_seconds: float = Field(gt=0, allow_inf_nan=False, description="latency objective in seconds")
    tolerance: float = Field(default=0.1, ge=0, lt=1, description="relative band around the SLO in both directions")

    @field_validator("signal")
    @classmethod
    def _check_latency_signal(cls, value: str) -> str:
        if not LATENCY_SIGNAL_PATTERN.match(value):
            raise ValueError(
                f"not a latency signal: {value!r}; use a name starting with ttft, itl, queue_time or e2e, e.g. ttft_p90"
            )
        return value


class LatencySloPolicy:
    """Scale so that a latency signal stays under its SLO without N <-> N-1 flapping."""

    name = "latency-slo"
    Params = LatencySloParams

    def __init__(self, params: LatencySloParams) -> None:
        self.params = params

    def signals(self) -> list[str]:
        return [self.params.signal]

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        observed = read_sample_value(context, self.params.signal)
        if isinstance(observed, Desire):
            return PolicyResult(observed)
        return PolicyResult(self._decide(context, observed))

    def _decide(self, context: PolicyContext, observed: float) -> Desire:
        slo, tolerance = self.params.slo_seconds, self.params.tolerance
        current = context.current_replicas
        basis = replica_basis(context)
        ratio = observed / slo
        reason = f"{self.params.signal} {describe_ratio(observed, slo, ratio, label='slo')}"

        if ratio > 1 + tolerance:
            desired = max(current, ceil_replicas(basis * ratio), 1)
            return Desire.scale_to(desired, reason)
        if ratio >= 1 - tolerance:
            return Desire.scale_to(max(current, 1), f"{reason}: inside tolerance, keep {max(current, 1)}")

        # The smallest n with observed * basis / n <= slo.
        smallest = max(ceil_replicas(basis * ratio), 1)
        if smallest >= current:
            return Desire.scale_to(max(current, 1), self._hold_reason(reason, observed, basis, current))
        estimate = observed * basis / smallest
        return Desire.scale_to(smallest, f"{reason}: estimated {format_number(estimate)} with {smallest} replicas")

    def _hold_reason(self, reason: str, observed: float, basis: int, current: int) -> str:
        if current <= 1:
            return f"{reason}: keep {max(current, 1)}, only an idle window scales to zero"
        fewer = current - 1
        estimate = observed * basis / fewer
        return (
            f"{reason}: keep {current}, estimated {format_number(estimate)} with {fewer} replicas "
            f"would exceed slo {format_number(self.params.slo_seconds)}"
        )
