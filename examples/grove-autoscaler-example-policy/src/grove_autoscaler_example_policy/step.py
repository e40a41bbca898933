"""`example-step`: a fixed replica count for each range of a signal.

Take `steps: [{above: 0, replicas: 1}, {above: 20, replicas: 3}, {above: 50, replicas: 6}]`
on `request_rate`: 35 requests/s gives 3 replicas. A value below every step gives 0, which the
autoscaler raises to the target's minimum.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.base import Desire, PolicyContext, PolicyParams, PolicyResult


class Step(BaseModel):
    """One step: from `above` (inclusive, in the signal's unit) upwards, run `replicas`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    above: float = Field(allow_inf_nan=False)
    replicas: int = Field(ge=0)


class StepParams(PolicyParams):
    signal: str = Field(default="request_rate", description="catalog signal to read, e.g. request_rate")
    steps: list[Step] = Field(min_length=1, description="thresholds in increasing order with their replica counts")

    @model_validator(mode="after")
    def _check_order(self) -> StepParams:
        thresholds = [step.above for step in self.steps]
        if thresholds != sorted(thresholds) or len(set(thresholds)) != len(thresholds):
            raise ValueError(f"steps must have strictly increasing 'above' values, got {thresholds}")
        return self


class StepPolicy:
    """Map the value of one signal to a replica count by steps."""

    name = "example-step"
    Params = StepParams

    def __init__(self, params: StepParams) -> None:
        self.params = params

    def signals(self) -> list[str]:
        return [self.params.signal]

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        signal = self.params.signal
        sample = context.samples.get(signal)

        # An idle window may go to the floor; anything unknown must never read as zero load.
        if sample is None or sample.is_unknown:
            reason = sample.reason if sample is not None else "no sample"
            return PolicyResult(Desire.unknown(f"{signal}: {reason}"))
        if sample.is_idle:
            return PolicyResult(Desire.idle(f"{signal}: idle window"))
        value = sample.value
        if value is None or not math.isfinite(value):
            return PolicyResult(Desire.unknown(f"{signal} has no finite value (got {value!r})"))

        replicas = 0
        for step in self.params.steps:
            if value >= step.above:
                replicas = step.replicas
        return PolicyResult(Desire.scale_to(replicas, f"{signal} {value:g}: step gives {replicas} replicas"))
