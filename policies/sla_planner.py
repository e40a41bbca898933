"""`sla-planner`: size a prefill or decode target for its latency objective from a profile.

The sizing starts from the Dynamo planner's model and adds what it misses:

- Load: the request rate is forecast `cold_start_seconds` ahead (a replica ordered now serves
  only then), and the larger of the observed and the forecast rate is sized for.
- Prefill, for the TTFT objective T: a replica serves isl tokens in S = profiled TTFT(isl) and
  offers capacity = prefill tokens/s/GPU(isl) * GPUs. Requests queue in front of it; modelled
  as an M/D/1 queue the mean TTFT is S + rho * S / (2 * (1 - rho)), which stays within T up to
  the utilisation rho* = 2 (T - S) / (2 T - S), capped at `max_utilisation`. Replicas = ceil(
  rate * isl / (capacity * rho*)).
- Decode, for the ITL objective: the profile gives the highest decode throughput per GPU whose
  ITL meets the corrected target at context isl + osl / 2. Replicas = ceil(rate * osl /
  (throughput * GPUs)).
- Online correction: prefill service time = observed mean TTFT minus observed mean queue time,
  divided by the profiled TTFT; decode ITL = observed mean ITL divided by the profiled ITL at
  the observed concurrency. Each factor is clamped and smoothed over ticks. The prefill factor
  scales S and the capacity. The decode factor divides the ITL target, as in Dynamo.
- Queueing (bursts): the waiting requests are a backlog to drain within `queue_drain_seconds`,
  which adds replicas. When the observed queue time exceeds the queueing part of the TTFT
  budget although the model finds the replicas sufficient, the model is wrong for this load.
  The policy then requests one more replica than now, unless a replica is still starting.
- Optional TTFT quantile feedback (`ttft_quantile_signal`, prefill): bursts and long prompts
  queue more than the M/D/1 model expects. Where the quantile misses the objective, the
  planned utilisation drops below the observed one; it recovers slowly while the quantile
  is met.
- Scale-down only to a count whose replicas stay within the objective with
  `scale_down_headroom` to spare at the current load, and never while requests queue beyond
  the budget or during the warm-up (`warmup_seconds` after the first tick, while the
  forecaster has no history). This band between the scale-up and scale-down limits prevents
  N <-> N-1 flapping.
- An idle window (no request arrived and none waits or runs) returns idle. A request rate or
  ISL that is unknown returns unknown, and any other unknown input blocks scale-down.
  A queue that neither drains nor progresses for `stuck_seconds` stops counting.
  NOTE: an idle window does not consult the forecast, so a seasonal return of traffic after
  zero load is not pre-warmed. The target scales up from its floor when requests arrive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field, field_validator, model_validator

from policies.base import Desire, DesireKind, PolicyContext, PolicyParams, PolicyResult
from policies.dynamo_compatible import load_profile
from policies.forecast import ForecastError, ForecasterConfig, HoltWintersConfig, make_forecaster
from policies.queue import StuckQueue, optional_value, serving_replicas
from policies.target import ceil_replicas, format_number, read_sample_value, validate_signal_name

REQUEST_RATE = "request_rate"
ISL = "isl_mean"
OSL = "osl_mean"
TTFT = "ttft_mean"
ITL = "itl_mean"
WAITING = "requests_waiting"
THROUGHPUT = "decode_throughput"

# A correction factor outside this range is a measurement artefact (a handful of requests,
# a cache-hit burst), not a property of the engine. Clamping keeps one bad window harmless.
CORRECTION_RANGE = (0.25, 4.0)


class SlaPlannerParams(PolicyParams):
    role: Literal["prefill", "decode"] = Field(description="which engine role this target runs")
    ttft_slo_seconds: float = Field(default=0.5, gt=0, allow_inf_nan=False, description="mean TTFT objective, seconds")
    itl_slo_seconds: float = Field(default=0.05, gt=0, allow_inf_nan=False, description="mean ITL objective, seconds")
    profile_dir: Path | None = Field(default=None, description="Dynamo profiling directory; the bundled H200 profile when unset")
    gpus_per_replica: int = Field(default=1, ge=1, description="GPUs of one replica (engine) of this role")
    cold_start_seconds: float = Field(
        default=120.0, ge=0, le=3600, description="seconds from ordering a replica to its serving; the forecast horizon"
    )
    forecaster: ForecasterConfig = Field(default_factory=HoltWintersConfig, description="forecaster of the request rate")
    max_utilisation: float = Field(default=0.9, gt=0, le=1, description="highest prefill utilisation planned for")
    scale_down_headroom: float = Field(
        default=0.1, ge=0, lt=1, description="capacity fraction the replicas left after a scale-down must keep spare"
    )
    queue_drain_seconds: float = Field(default=60.0, gt=0, le=3600, description="seconds in which to drain the waiting requests")
    ttft_quantile_signal: str | None = Field(
        default=None,
        description="prefill only: a TTFT quantile (for example ttft_p99) kept within the TTFT objective by "
        "lowering the planned utilisation where it was exceeded; null plans with the queue model alone",
    )
    min_utilisation: float = Field(
        default=0.3, gt=0, le=1, description="lowest prefill utilisation the ttft_quantile_signal feedback may plan for"
    )
    utilisation_recovery: float = Field(
        default=0.01, ge=0, le=1, description="utilisation the learned limit regains per tick while the quantile meets the objective near the limit"
    )
    quantile_tolerance: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="fraction above the TTFT objective the quantile may reach before the limit drops; histogram "
        "buckets are coarse near the objective (0.47 s and 1 s bounds by default in Dynamo)",
    )
    stable_seconds: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="seconds the ready replicas must stay unchanged before the TTFT quantile counts; at least the signal window",
    )
    warmup_seconds: float | None = Field(
        default=None,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="seconds after the policy's first tick with no scale-down, while the forecaster has too little "
        "history to see a ramp; null means cold_start_seconds",
    )
    queue_time_signal: str | None = Field(
        default="queue_time_p90",
        description="queue-time statistic compared with the queueing budget; null when the engine exports no queue time",
    )
    queue_time_mean_signal: str | None = Field(
        default="queue_time_mean",
        description="mean queue time subtracted from the TTFT in the prefill correction; null keeps Dynamo's min(1, p_corr)",
    )
    running_signal: str = Field(
        default="requests_running",
        description="requests being served, summed over replicas (requests_inflight for the dynamo preset)",
    )
    correction_smoothing: float = Field(
        default=0.3, gt=0, le=1, description="weight of the newest correction factor (1 uses only the newest)"
    )
    stuck_seconds: float | None = Field(
        default=300.0,
        gt=0,
        allow_inf_nan=False,
        description="seconds a queue may stay without draining or progress before it stops counting; null disables",
    )

    @field_validator("queue_time_signal", "queue_time_mean_signal", "running_signal", "ttft_quantile_signal")
    @classmethod
    def _check_signal(cls, value: str | None) -> str | None:
        return None if value is None else validate_signal_name(value)

    @model_validator(mode="after")
    def _check_utilisation_range(self) -> SlaPlannerParams:
        # The default floor (0.3) above a lower max_utilisation is harmless: the limit is clamped
        # to max_utilisation last. Only an explicit contradiction is an error.
        if "min_utilisation" in self.model_fields_set and self.min_utilisation > self.max_utilisation:
            raise ValueError(
                f"min_utilisation {self.min_utilisation} is above max_utilisation {self.max_utilisation}; lower min_utilisation"
            )
        return self


@dataclass(frozen=True)
class Sizing:
    """Replica counts for the scale-up and the stricter scale-down limit, and what they rest on."""

    up: int
    down: int
    queue_budget_seconds: float
    summary: str


class SlaPlannerPolicy:
    """Size one role for its latency objective from the profile, the forecast and the queue."""

    name = "sla-planner"
    Params = SlaPlannerParams

    def __init__(self, params: SlaPlannerParams) -> None:
        self.params = params
        self.profile = load_profile(params.profile_dir)

    def signals(self) -> list[str]:
        params = self.params
        names = [REQUEST_RATE, ISL]
        if params.role == "prefill":
            names += [TTFT, params.queue_time_mean_signal, params.ttft_quantile_signal]
        else:
            names += [OSL, ITL, THROUGHPUT]
        names += [params.queue_time_signal, WAITING, params.running_signal]
        return [name for name in dict.fromkeys(names) if name is not None]

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        state: dict[str, Any] = dict(context.state)
        waiting = optional_value(context.samples.get(WAITING))
        running = optional_value(context.samples.get(self.params.running_signal))
        stuck = self._track_stuck(context, state, waiting, running)
        warming = self._warming_up(context, state)

        rate = read_sample_value(context, REQUEST_RATE)
        if isinstance(rate, Desire) and rate.kind is DesireKind.UNKNOWN:
            return PolicyResult(rate, state)
        rate_value = 0.0 if isinstance(rate, Desire) else rate
        predicted = self._forecast(context, state, rate_value)

        if rate_value == 0:
            return PolicyResult(self._no_arrivals(context, waiting, running, stuck), state)

        isl = self._length(context, state, ISL, "last_isl")
        osl = self._length(context, state, OSL, "last_osl") if self.params.role == "decode" else 0.0
        if isinstance(isl, Desire):
            return PolicyResult(isl, state)
        if isinstance(osl, Desire):
            return PolicyResult(osl, state)

        load_rate = max(rate_value, predicted)
        backlog = 0.0 if stuck or waiting is None else waiting
        if self.params.role == "prefill":
            sizing = self._size_prefill(context, state, load_rate, isl, backlog, observed_rate=rate_value)
        else:
            sizing = self._size_decode(context, state, load_rate, isl, osl, backlog)

        rate_note = f"{REQUEST_RATE} {format_number(rate_value)}/s (forecast {format_number(predicted)}/s in {self.params.cold_start_seconds:.0f}s)"
        return PolicyResult(self._choose(context, sizing, rate_note, waiting, stuck, warming), state)

    # --- inputs ------------------------------------------------------------------------------

    def _track_stuck(
        self, context: PolicyContext, state: dict[str, Any], waiting: float | None, running: float | None
    ) -> bool:
        if self.params.stuck_seconds is None:
            return False
        tracker = StuckQueue.from_state(state.get("stuck"))
        if self.params.role == "decode":
            throughput = optional_value(context.samples.get(THROUGHPUT))
            progress = None if throughput is None else throughput > 0
        else:
            # Prefill engines export no token counter here, so progress is any request running.
            progress = None if running is None else running > 0
        if progress is not None and serving_replicas(context) == 0:
            progress = True
        tracker.update(context.now, waiting, progress)
        state["stuck"] = tracker.to_state()
        return context.current_replicas > 0 and tracker.stuck_for(context.now) >= self.params.stuck_seconds

    def _warming_up(self, context: PolicyContext, state: dict[str, Any]) -> float | None:
        """Return the seconds of warm-up left (None when over); the first tick starts the warm-up."""
        first = state.get("first_tick")
        if not isinstance(first, (int, float)) or not math.isfinite(first) or first > context.now:
            first = context.now
        state["first_tick"] = first
        warmup = self.params.warmup_seconds
        if warmup is None:
            warmup = self.params.cold_start_seconds
        left = first + warmup - context.now
        return left if left > 0 else None

    def _forecast(self, context: PolicyContext, state: dict[str, Any], rate: float) -> float:
        try:
            forecaster = make_forecaster(self.params.forecaster, state.get("forecaster"))
        except ForecastError:
            forecaster = make_forecaster(self.params.forecaster)
        forecaster.observe(context.now, rate)
        state["forecaster"] = forecaster.to_dict()
        predicted = forecaster.predict(self.params.cold_start_seconds)
        return max(0.0, predicted) if math.isfinite(predicted) else rate

    def _length(self, context: PolicyContext, state: dict[str, Any], signal: str, key: str) -> float | Desire:
        """Return the mean sequence length. An idle window (no request finished) reuses the last one."""
        value = read_sample_value(context, signal)
        if isinstance(value, float) and value > 0:
            state[key] = value
            return value
        last = state.get(key)
        if isinstance(value, Desire) and value.kind is DesireKind.IDLE and isinstance(last, (int, float)) and last > 0:
            return float(last)
        reason = value.reason if isinstance(value, Desire) else f"{signal} is 0"
        return Desire.unknown(f"requests arrive but {signal} has no usable value: {reason}")

    def _correction(self, state: dict[str, Any], key: str, observed_ratio: float | None) -> float:
        previous = state.get(key)
        previous = float(previous) if isinstance(previous, (int, float)) and math.isfinite(previous) else 1.0
        if observed_ratio is None or not math.isfinite(observed_ratio) or observed_ratio <= 0:
            return previous
        low, high = CORRECTION_RANGE
        clamped = min(max(observed_ratio, low), high)
        weight = self.params.correction_smoothing
        factor = weight * clamped + (1 - weight) * previous
        state[key] = factor
        return factor

    # --- sizing ------------------------------------------------------------------------------

    def _size_prefill(
        self, context: PolicyContext, state: dict[str, Any], rate: float, isl: float, backlog: float, *, observed_rate: float
    ) -> Sizing:
        params = self.params
        profiled_service = self.profile.prefill_ttft_seconds(isl)
        ttft = optional_value(context.samples.get(TTFT))
        queue_mean = None
        if params.queue_time_mean_signal is not None:
            queue_mean = optional_value(context.samples.get(params.queue_time_mean_signal))
        ratio = None
        if ttft is not None and ttft > 0:
            service = ttft - queue_mean if queue_mean is not None else ttft
            ratio = service / profiled_service
            if queue_mean is None:
                # Without the queue time the excess over the profile may be queueing (Dynamo's view).
                ratio = min(1.0, ratio)
        correction = self._correction(state, "p_correction", ratio)

        service = profiled_service * correction
        capacity = self.profile.prefill_throughput_per_gpu(isl) * params.gpus_per_replica / correction
        target = params.ttft_slo_seconds
        feasible = service < target
        if feasible:
            utilisation = min(params.max_utilisation, 2 * (target - service) / (2 * target - service))
        else:
            utilisation = params.max_utilisation
        limit, limit_note = self._utilisation_limit(context, state, observed_rate * isl / capacity)
        utilisation = min(utilisation, limit)

        demand = rate * isl
        drain = backlog * isl / params.queue_drain_seconds
        up = ceil_replicas(demand / (capacity * utilisation) + drain / capacity)
        down = ceil_replicas(demand / (capacity * utilisation * (1 - params.scale_down_headroom)) + drain / capacity)
        summary = (
            f"prefill {format_number(demand)} tokens/s + backlog {format_number(backlog)} over "
            f"{format_number(capacity)} tokens/s per replica at utilisation {utilisation:.2f} "
            f"(service {service * 1000:.0f} ms, p_corr {correction:.2f}{limit_note})"
        )
        if not feasible:
            summary += f"; TTFT objective {target * 1000:.0f} ms is below the service time, cannot be met by scaling"
        # Queueing longer than the service time calls for a replica even when the objective is out of reach.
        queue_budget = target - service if feasible else service
        return Sizing(up, down, queue_budget, summary)

    def _utilisation_limit(self, context: PolicyContext, state: dict[str, Any], busy_replicas: float) -> tuple[float, str]:
        """Return the learned prefill utilisation limit and a note for the reason.

        When the TTFT quantile exceeds the objective (plus `quantile_tolerance`) at an observed
        utilisation below the limit, the limit drops to 95 % of that utilisation. While the
        quantile meets the objective at a utilisation within 0.1 of the limit, the limit rises
        by `utilisation_recovery` per tick up to `max_utilisation`. `busy_replicas` is the
        observed load in replicas' worth of prefill capacity.
        """
        params = self.params
        if params.ttft_quantile_signal is None:
            return params.max_utilisation, ""
        previous = state.get("u_limit")
        limit = float(previous) if isinstance(previous, (int, float)) and math.isfinite(previous) else params.max_utilisation
        limit = min(max(limit, params.min_utilisation), params.max_utilisation)
        state["u_limit"] = limit
        note = f", utilisation limit {limit:.2f}"

        # The quantile's window must have seen only the current ready replicas.
        ready = serving_replicas(context)
        if ready != state.get("ready_count"):
            state["ready_count"] = ready
            state["ready_since"] = context.now
        stable_for = context.now - float(state.get("ready_since", context.now))
        quantile = optional_value(context.samples.get(params.ttft_quantile_signal))
        if quantile is None or ready <= 0 or stable_for < params.stable_seconds:
            return limit, note

        observed = busy_replicas / ready
        target = params.ttft_slo_seconds
        if quantile > target * (1 + params.quantile_tolerance) and observed < limit:
            limit = max(params.min_utilisation, 0.95 * observed)
            note = (
                f", utilisation limit {limit:.2f}: {params.ttft_quantile_signal} {quantile * 1000:.0f} ms > "
                f"objective at utilisation {observed:.2f}"
            )
        elif quantile <= target and observed >= limit - 0.1:
            limit = min(params.max_utilisation, limit + params.utilisation_recovery)
            note = f", utilisation limit {limit:.2f}"
        state["u_limit"] = limit
        return limit, note

    def _size_decode(
        self, context: PolicyContext, state: dict[str, Any], rate: float, isl: float, osl: float, backlog: float
    ) -> Sizing:
        params = self.params
        context_length = isl + osl / 2
        itl = optional_value(context.samples.get(ITL))
        running = optional_value(context.samples.get(params.running_signal))
        ratio = None
        if itl is not None and itl > 0 and running is not None and context.current_replicas > 0:
            kv_usage = running / context.current_replicas * context_length / self.profile.max_kv_tokens
            expected = self.profile.decode_itl_seconds(kv_usage, context_length)
            ratio = itl / expected if expected > 0 else None
        correction = self._correction(state, "d_correction", ratio)

        itl_target = params.itl_slo_seconds / correction
        per_gpu, kv_usage = self.profile.best_decode_throughput_per_gpu(itl_target, context_length)
        capacity = max(per_gpu * params.gpus_per_replica, 1e-9)
        demand = rate * osl
        drain = backlog * osl / params.queue_drain_seconds
        up = ceil_replicas((demand + drain) / capacity)
        down = ceil_replicas(demand / (capacity * (1 - params.scale_down_headroom)) + drain / capacity)
        summary = (
            f"decode {format_number(demand)} tokens/s + backlog {format_number(backlog)} over "
            f"{format_number(capacity)} tokens/s per replica at itl {itl_target * 1000:.1f} ms "
            f"(kv usage {kv_usage:.2f}, d_corr {correction:.2f})"
        )
        return Sizing(up, down, params.ttft_slo_seconds, summary)

    # --- decision ----------------------------------------------------------------------------

    def _choose(
        self,
        context: PolicyContext,
        sizing: Sizing,
        rate_note: str,
        waiting: float | None,
        stuck: bool,
        warming: float | None,
    ) -> Desire:
        current = context.current_replicas
        queue_signal = self.params.queue_time_signal
        queue_time = None if queue_signal is None else optional_value(context.samples.get(queue_signal))
        queueing = queue_time is not None and queue_time > sizing.queue_budget_seconds and not stuck
        reason = f"{rate_note}; {sizing.summary}"

        # The queue-time window outlives a burst: add a replica only while requests still wait.
        # A replica still starting has not served yet, so the queue cannot show whether the count
        # that includes it is enough. Adding one per tick until it serves overshoots by a cold start.
        still_waiting = waiting is None or waiting > 0
        starting = 0 if context.ready_replicas is None else max(0, current - context.ready_replicas)
        up = max(sizing.up, 1)
        if queueing and still_waiting and up <= current and starting == 0:
            up = current + 1
            reason += (
                f"; {queue_signal} {queue_time * 1000:.0f} ms > queueing budget "
                f"{sizing.queue_budget_seconds * 1000:.0f} ms: one more replica than the model asks"
            )
        elif queueing and still_waiting and up <= current:
            reason += f"; {queue_signal} {queue_time * 1000:.0f} ms > queueing budget, {starting} replica(s) still starting"
        if up > current:
            return Desire.scale_to(up, f"{reason}: scale up to {up}")

        down = max(sizing.down, 1)
        unknown = self._unknown_signals(context)
        if down >= current:
            return Desire.scale_to(current, f"{reason}: keep {current}")
        if unknown:
            return Desire.unknown(f"{', '.join(unknown)} unknown: scale-down to {down} blocked ({reason})")
        if queueing:
            return Desire.scale_to(current, f"{reason}: keep {current} while requests queue")
        if warming is not None:
            return Desire.scale_to(current, f"{reason}: keep {current} for {warming:.0f}s more of warm-up, then scale down to {down}")
        return Desire.scale_to(down, f"{reason}: scale down to {down}, which meets the objective with headroom")

    def _unknown_signals(self, context: PolicyContext) -> list[str]:
        return [name for name in self.signals() if optional_value(context.samples.get(name)) is None]

    def _no_arrivals(self, context: PolicyContext, waiting: float | None, running: float | None, stuck: bool) -> Desire:
        current = context.current_replicas
        unknown = self._unknown_signals(context)
        if unknown:
            # A failed read next to an idle rate may be the same outage: do not go to the floor on it.
            return Desire.unknown(f"no request arrived but {', '.join(unknown)} unknown")
        assert waiting is not None and running is not None
        if stuck:
            return Desire.idle(f"no request arrived; {format_number(waiting)} waiting requests are stuck, not counted")
        if waiting > 0 and current == 0:
            return Desire.scale_to(1, f"no request arrived but {format_number(waiting)} wait with 0 replicas")
        if waiting > 0 or running > 0:
            return Desire.scale_to(
                current, f"no request arrived; keep {current} for {format_number(waiting)} waiting and {format_number(running)} running"
            )
        return Desire.idle("no request arrived, none waiting or running")
