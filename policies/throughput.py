"""`throughput`: keep the decode tokens per second per replica at a target.

HeteroScale (ByteDance, arXiv 2508.19559) scales the prefill and decode roles of
disaggregated serving together on this signal in production. The arithmetic is an HPA
AverageValue target: ratio = throughput / (target * live replicas); inside the tolerance
band the count stays, otherwise desired = ceil(throughput / target).

Set the target below the throughput a replica sustains at its ITL objective, for example 70
to 80 % of the profiled value. At saturation the measured throughput stops growing with
demand, so a target at the saturation point hides the excess. To scale a prefill target
from the decode throughput, as HeteroScale does, attach this policy to the prefill target,
point `decode_throughput` at the decode pods with the rule's `signalLabels`, and give the
target as decode tokens/s per prefill replica.

A window without output tokens (value 0 or idle) is an idle window: the target may go to
its floor.
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
    validate_signal_name,
)


class ThroughputParams(PolicyParams):
    target_tokens_per_second_per_replica: float = Field(
        gt=0, allow_inf_nan=False, description="output tokens/s per replica to keep, on average"
    )
    signal: str = Field(default="decode_throughput", description="signal with output tokens/s summed over replicas")
    tolerance: float = Field(default=0.1, ge=0, lt=1, description="relative band around the target in both directions")

    @field_validator("signal")
    @classmethod
    def _check_signal(cls, value: str) -> str:
        return validate_signal_name(value)


class ThroughputPolicy:
    """Scale on decode tokens per second per replica."""

    name = "throughput"
    Params = ThroughputParams

    def __init__(self, params: ThroughputParams) -> None:
        self.params = params

    def signals(self) -> list[str]:
        return [self.params.signal]

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        throughput = read_sample_value(context, self.params.signal)
        if isinstance(throughput, Desire):
            return PolicyResult(throughput)
        return PolicyResult(self._decide(context, throughput))

    def _decide(self, context: PolicyContext, throughput: float) -> Desire:
        signal, target = self.params.signal, self.params.target_tokens_per_second_per_replica
        if throughput == 0:
            return Desire.idle(f"{signal} is 0: no output tokens in the window")

        current = context.current_replicas
        desired = ceil_replicas(throughput / target)
        if current == 0:
            return Desire.scale_to(
                desired, f"{signal} {format_number(throughput)} with 0 replicas, target {format_number(target)} per replica"
            )

        ratio = throughput / (target * current)
        reason = f"{signal} {format_number(throughput)} over {current} replicas = " + describe_ratio(
            throughput / current, target, ratio, unit=" per replica"
        )
        if Tolerances(self.params.tolerance, self.params.tolerance).contain(ratio):
            return Desire.scale_to(current, f"{reason}: inside tolerance, keep {current}")
        return Desire.scale_to(desired, reason)
