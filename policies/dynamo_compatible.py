"""`dynamo-compatible`: the replica counts of the NVIDIA Dynamo SLA planner's throughput mode.

One policy instance sizes one role (`prefill` or `decode`) with the planner's formulas, where
I is the adjustment interval and num_req = request_rate * I is the request count expected in
the next interval:

- prefill: P = ceil(num_req * isl / I * min(1, p_corr) / thpt_prefill_per_gpu(isl) / gpus_per_engine)
- decode: the ITL target is itl_slo / d_corr. The profile gives the highest decode throughput
  per GPU that meets it at context isl + osl / 2, and
  D = ceil(num_req * osl / I / thpt_decode_per_gpu / gpus_per_engine)
- both are then raised to at least `min_endpoint`.

p_corr = observed mean TTFT / profiled TTFT at the observed ISL, and d_corr = observed mean
ITL / profiled ITL at the observed per-replica concurrency and context. The planner derives
the concurrency from num_req * request duration / I per decode worker. This policy reads it
directly as `concurrency_signal` / replicas (requests_running, or requests_inflight with the
dynamo preset), which is the same quantity by Little's law.

NOTE: the profile lookups come from `policies.profile`, which differs from the planner in
two details. It reads the decode ITL grid bilinearly where the planner takes the nearest grid
cell. It also picks the context row of the best decode throughput by rounding down where the
planner rounds to nearest. Either can move a decode count by one grid step at some contexts.

The planner averages its inputs over the adjustment interval, so set `metrics.windowSeconds`
to the interval for the same numbers. The policy adjusts at its first tick and then once per
interval. Between adjustments it returns its previous desire, kept in the policy state.
Predictions of num_req, ISL and OSL come from the `predictor` forecaster (the planner's
default `constant` repeats the last interval), fed once per adjustment with a step of one
interval.

Deliberate differences from the planner (whose own behaviour is a known field failure):
an idle window (request rate 0 or 0/0) returns idle, so the target may go to its floor,
where the planner skips the adjustment and keeps its replicas forever. A failed read of
any input returns unknown instead of a lower count, also between adjustments, so it
blocks scale-down and never reads as zero load.

The GPU budget shared by both roles is cross-target, so it is not applied here: the engine
applies budgets after every policy. `apply_dynamo_gpu_budget` reproduces the planner's own
budget rule as a pure function for comparisons and backtests.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field, field_validator

from policies.base import Desire, DesireKind, PolicyContext, PolicyParams, PolicyResult
from policies.forecast import ConstantConfig, ForecastError, ForecasterConfig, make_forecaster
from policies.profile import Profile, bundled_profile_dir
from policies.queue import block_scale_down, optional_value
from policies.target import format_number, read_sample_value, validate_signal_name

REQUEST_RATE = "request_rate"
ISL = "isl_mean"
OSL = "osl_mean"
TTFT = "ttft_mean"
ITL = "itl_mean"


@functools.lru_cache(maxsize=16)
def _load_profile(directory: str) -> Profile:
    return Profile.load(directory)


def load_profile(directory: Path | str | None) -> Profile:
    """Load a profiling directory (the bundled profile when None), once per process per path.

    Raises ProfileError when the directory is missing or invalid.
    """
    path = bundled_profile_dir() if directory is None else Path(directory)
    return _load_profile(str(path.resolve()))


# --- The planner's formulas as pure functions ------------------------------------------------


def dynamo_prefill_replicas(
    *,
    num_req: float,
    isl: float,
    interval_seconds: float,
    p_correction: float,
    throughput_per_gpu: float,
    gpus_per_engine: int,
    min_endpoint: int,
) -> int:
    """Return the planner's prefill count; `throughput_per_gpu` is prefill tokens/s/GPU at `isl`."""
    demand = num_req * isl / interval_seconds * min(1.0, p_correction)
    replicas = math.ceil(demand / throughput_per_gpu / gpus_per_engine)
    return max(replicas, min_endpoint)


def dynamo_decode_replicas(
    *,
    num_req: float,
    osl: float,
    interval_seconds: float,
    throughput_per_gpu: float,
    gpus_per_engine: int,
    min_endpoint: int,
) -> int:
    """Return the planner's decode count; `throughput_per_gpu` is output tokens/s/GPU at the corrected ITL target."""
    demand = num_req * osl / interval_seconds
    replicas = math.ceil(demand / throughput_per_gpu / gpus_per_engine)
    return max(replicas, min_endpoint)


def dynamo_corrected_itl(itl_slo_seconds: float, d_correction: float) -> float:
    """Return the ITL target after correction; the planner ignores a factor <= 0 (no data yet)."""
    if d_correction <= 0:
        return itl_slo_seconds
    return itl_slo_seconds / d_correction


def apply_dynamo_gpu_budget(
    prefill: int,
    decode: int,
    prefill_gpus: int,
    decode_gpus: int,
    budget: int,
    min_endpoint: int,
) -> tuple[int, int]:
    """Fit a prefill and a decode count into a GPU budget with the planner's rule.

    A negative budget means none. Within the budget both counts stay. Otherwise scale = budget /
    required GPUs, and prefill becomes floor(prefill * scale), clamped to min_endpoint below and
    above to the maximum that still leaves GPUs for min_endpoint decode replicas. Decode then
    takes floor(remaining GPUs / decode_gpus), at least min_endpoint. A budget too small for
    min_endpoint replicas of each role returns (0, 0).
    """
    for name, value in (("prefill_gpus", prefill_gpus), ("decode_gpus", decode_gpus)):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if budget < 0:
        return prefill, decode
    required = prefill * prefill_gpus + decode * decode_gpus
    if required <= budget:
        return prefill, decode
    if budget < min_endpoint * (prefill_gpus + decode_gpus):
        return 0, 0

    scale = budget / required
    max_prefill = math.floor((budget - min_endpoint * decode_gpus) / prefill_gpus)
    prefill = max(min_endpoint, min(max_prefill, math.floor(prefill * scale)))
    remaining = budget - prefill * prefill_gpus
    decode = max(min_endpoint, math.floor(remaining / decode_gpus))
    return prefill, decode


# --- The policy ------------------------------------------------------------------------------


class DynamoCompatibleParams(PolicyParams):
    role: Literal["prefill", "decode"] = Field(description="which engine role this target runs")
    ttft_slo_seconds: float = Field(default=0.5, gt=0, allow_inf_nan=False, description="TTFT objective, seconds")
    itl_slo_seconds: float = Field(default=0.05, gt=0, allow_inf_nan=False, description="ITL objective, seconds")
    adjustment_interval_seconds: float = Field(default=180.0, gt=0, le=86400, description="seconds between adjustments")
    profile_dir: Path | None = Field(default=None, description="Dynamo profiling directory; the bundled H200 profile when unset")
    gpus_per_engine: int = Field(default=1, ge=1, description="GPUs of one replica (engine) of this role")
    min_endpoint: int = Field(default=1, ge=0, description="minimum replicas the formulas return")
    predictor: ForecasterConfig = Field(default_factory=ConstantConfig, description="forecaster of num_req, ISL and OSL")
    correction: bool = Field(default=True, description="apply the p_corr / d_corr correction factors")
    concurrency_signal: str = Field(
        default="requests_running",
        description="requests being decoded, summed over replicas (requests_inflight for the dynamo preset)",
    )

    @field_validator("concurrency_signal")
    @classmethod
    def _check_signal(cls, value: str) -> str:
        return validate_signal_name(value)


class DynamoCompatiblePolicy:
    """Size one role with the Dynamo planner's formulas, adjusting once per interval."""

    name = "dynamo-compatible"
    Params = DynamoCompatibleParams

    def __init__(self, params: DynamoCompatibleParams) -> None:
        self.params = params
        self.profile = load_profile(params.profile_dir)
        # One step per interval, so that the predictor's next step is the planner's next interval.
        predictor = params.predictor
        if "step_seconds" in type(predictor).model_fields:
            predictor = type(predictor).model_validate(
                {**predictor.model_dump(), "step_seconds": params.adjustment_interval_seconds}
            )
        self.predictor_config = predictor

    def signals(self) -> list[str]:
        if self.params.role == "prefill":
            return [REQUEST_RATE, ISL, TTFT]
        return [REQUEST_RATE, ISL, OSL, ITL, self.params.concurrency_signal]

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        state = dict(context.state)
        unknown = [name for name in self.signals() if optional_value(context.samples.get(name)) is None]
        previous = _previous_adjustment(state, context.now, self.params.adjustment_interval_seconds)
        if previous is not None:
            return PolicyResult(block_scale_down(previous, context.current_replicas, unknown), state)

        desire = self._adjust(context, state)
        if desire.kind is not DesireKind.UNKNOWN:
            # The planner waits a full interval after each adjustment; an unknown tick retries next tick.
            state["adjusted_at"] = context.now
            state["last_desire"] = {"kind": desire.kind.value, "replicas": desire.replicas, "reason": desire.reason}
        return PolicyResult(block_scale_down(desire, context.current_replicas, unknown), state)

    def _adjust(self, context: PolicyContext, state: dict[str, Any]) -> Desire:
        rate = read_sample_value(context, REQUEST_RATE)
        if isinstance(rate, Desire):
            if rate.kind is DesireKind.IDLE:
                self._observe(context, state, 0.0, None, None)
            return rate
        if rate == 0:
            self._observe(context, state, 0.0, None, None)
            return Desire.idle(f"{REQUEST_RATE} is 0")

        isl = read_sample_value(context, ISL)
        if isinstance(isl, Desire):
            return Desire.unknown(f"{ISL} has no value while requests arrive: {isl.reason}")
        osl: float | Desire = 0.0
        if self.params.role == "decode":
            osl = read_sample_value(context, OSL)
            if isinstance(osl, Desire):
                return Desire.unknown(f"{OSL} has no value while requests arrive: {osl.reason}")

        interval = self.params.adjustment_interval_seconds
        if self.params.correction:
            self._update_correction(context, state, isl, osl)
        next_num_req, next_isl, next_osl = self._observe(context, state, rate * interval, isl, osl)

        if self.params.role == "prefill":
            return self._prefill(state, next_num_req, next_isl)
        return self._decode(state, next_num_req, next_isl, next_osl)

    def _observe(
        self, context: PolicyContext, state: dict[str, Any], num_req: float, isl: float | None, osl: float | None
    ) -> tuple[float, float, float]:
        """Feed one interval to the three predictors; return the predicted num_req, ISL and OSL."""
        predictions = []
        interval = self.params.adjustment_interval_seconds
        for key, value in (("num_req", num_req), ("isl", isl), ("osl", osl)):
            saved = state.get(f"predictor_{key}")
            try:
                forecaster = make_forecaster(self.predictor_config, saved)
            except ForecastError:
                forecaster = make_forecaster(self.predictor_config)
            if value is not None:
                forecaster.observe(context.now, value)
            state[f"predictor_{key}"] = forecaster.to_dict()
            predicted = forecaster.predict(interval) if forecaster.has_data else (value or 0.0)
            predictions.append(max(0.0, predicted))
        return predictions[0], predictions[1], predictions[2]

    def _update_correction(self, context: PolicyContext, state: dict[str, Any], isl: float, osl: float) -> None:
        if self.params.role == "prefill":
            ttft = read_sample_value(context, TTFT)
            if isinstance(ttft, float):
                state["p_correction"] = ttft / self.profile.prefill_ttft_seconds(isl)
            return

        itl = read_sample_value(context, ITL)
        running = read_sample_value(context, self.params.concurrency_signal)
        if not isinstance(itl, float) or not isinstance(running, float) or context.current_replicas <= 0:
            return
        context_length = isl + osl / 2
        kv_usage = running / context.current_replicas * context_length / self.profile.max_kv_tokens
        expected = self.profile.decode_itl_seconds(kv_usage, context_length)
        if expected > 0:
            state["d_correction"] = itl / expected

    def _prefill(self, state: Mapping[str, Any], num_req: float, isl: float) -> Desire:
        params = self.params
        p_correction = _state_float(state, "p_correction")
        throughput = self.profile.prefill_throughput_per_gpu(isl)
        replicas = dynamo_prefill_replicas(
            num_req=num_req,
            isl=isl,
            interval_seconds=params.adjustment_interval_seconds,
            p_correction=p_correction,
            throughput_per_gpu=throughput,
            gpus_per_engine=params.gpus_per_engine,
            min_endpoint=params.min_endpoint,
        )
        reason = (
            f"prefill: {format_number(num_req)} requests x isl {format_number(isl)} / "
            f"{format_number(params.adjustment_interval_seconds)}s x min(1, p_corr {p_correction:.2f}) over "
            f"{format_number(throughput * params.gpus_per_engine)} tokens/s per replica = {replicas}"
        )
        return Desire.scale_to(replicas, reason)

    def _decode(self, state: Mapping[str, Any], num_req: float, isl: float, osl: float) -> Desire:
        params = self.params
        d_correction = _state_float(state, "d_correction")
        itl_target = dynamo_corrected_itl(params.itl_slo_seconds, d_correction)
        throughput, _ = self.profile.best_decode_throughput_per_gpu(itl_target, isl + osl / 2)
        if throughput <= 0:
            return Desire.unknown(f"profile has no decode throughput at context {format_number(isl + osl / 2)}")
        replicas = dynamo_decode_replicas(
            num_req=num_req,
            osl=osl,
            interval_seconds=params.adjustment_interval_seconds,
            throughput_per_gpu=throughput,
            gpus_per_engine=params.gpus_per_engine,
            min_endpoint=params.min_endpoint,
        )
        reason = (
            f"decode: {format_number(num_req)} requests x osl {format_number(osl)} / "
            f"{format_number(params.adjustment_interval_seconds)}s over "
            f"{format_number(throughput * params.gpus_per_engine)} tokens/s per replica at itl "
            f"{itl_target * 1000:.1f} ms (d_corr {d_correction:.2f}) = {replicas}"
        )
        return Desire.scale_to(replicas, reason)


def _previous_adjustment(state: Mapping[str, Any], now: float, interval: float) -> Desire | None:
    """Return the previous adjustment's desire while its interval runs, else None."""
    adjusted_at = state.get("adjusted_at")
    last_desire = state.get("last_desire")
    if not isinstance(adjusted_at, (int, float)) or not isinstance(last_desire, Mapping):
        return None
    if not 0 <= now - adjusted_at < interval:
        return None
    next_at = format_number(adjusted_at + interval)
    reason = f"hold until the next adjustment at t={next_at}: {last_desire.get('reason', '')}"
    if last_desire.get("kind") == DesireKind.IDLE.value:
        return Desire.idle(reason)
    replicas = last_desire.get("replicas")
    if isinstance(replicas, int) and replicas >= 0:
        return Desire.scale_to(replicas, reason)
    return None


def _state_float(state: Mapping[str, Any], key: str) -> float:
    """Return a correction factor from the state, 1 (no correction) when absent or malformed."""
    value = state.get(key, 1.0)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return 1.0
