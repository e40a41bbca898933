"""`kv-cache`: keep the mean KV-cache usage of a target's replicas near a target utilisation.

The signal is a fraction in [0, 1] averaged over the replicas that report it. B is the
number of those replicas: the ready replicas when reported and above zero, else the live
count, and 1 when the live count is 0 but the window still has a value. The cache in use
then fills usage * B replicas. As for an HPA AverageValue target,
ratio = usage / target_utilisation. Inside the tolerance band the count stays. Otherwise
desired = ceil(B * ratio), and at least 1 while any cache is in use.

Usage exactly 0 means no request is resident in any cache, so the policy returns idle and
the target may go to its floor. Queued requests that were never admitted do not occupy the
cache, so pair this policy with a queue signal when the floor is 0. A value above 1 is
reported as unknown (it blocks scale-down), because it usually means the source exports a
percentage.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from policies.base import Desire, PolicyContext, PolicyParams, PolicyResult
from policies.target import (
    Tolerances,
    ceil_replicas,
    describe_ratio,
    format_number,
    read_sample_value,
    replica_basis,
    validate_signal_name,
)

# The mean of values <= 1 can round to slightly above 1.
USAGE_EPSILON = 1e-9


class KvCacheParams(PolicyParams):
    target_utilisation: float = Field(default=0.8, gt=0, le=1, description="target mean KV-cache usage, a fraction")
    signal: str = Field(default="kv_cache_usage", description="signal with the mean KV-cache usage in [0, 1]")
    tolerance: float = Field(default=0.1, ge=0, lt=1, description="relative band around the target in both directions")

    @field_validator("signal")
    @classmethod
    def _check_signal(cls, value: str) -> str:
        return validate_signal_name(value)


class KvCachePolicy:
    """Scale on KV-cache pressure, the memory that bounds how many requests a replica runs."""

    name = "kv-cache"
    Params = KvCacheParams

    def __init__(self, params: KvCacheParams) -> None:
        self.params = params

    def signals(self) -> list[str]:
        return [self.params.signal]

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        usage = read_sample_value(context, self.params.signal)
        if isinstance(usage, Desire):
            return PolicyResult(usage)
        return PolicyResult(self._decide(context, usage))

    def _decide(self, context: PolicyContext, usage: float) -> Desire:
        signal, target = self.params.signal, self.params.target_utilisation
        if usage > 1 + USAGE_EPSILON:
            return Desire.unknown(
                f"{signal} is {format_number(usage)}, outside [0, 1]; the signal must be a fraction, not a percentage"
            )
        if usage == 0:
            return Desire.idle(f"{signal} is 0: no request is resident in any KV cache")

        current = context.current_replicas
        ratio = usage / target
        reason = f"{signal} {describe_ratio(usage, target, ratio)}"
        if current > 0 and Tolerances(self.params.tolerance, self.params.tolerance).contain(ratio):
            return Desire.scale_to(current, f"{reason}: inside tolerance, keep {current}")
        desired = max(ceil_replicas(replica_basis(context) * ratio), 1)
        return Desire.scale_to(desired, reason)
