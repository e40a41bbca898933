"""Fluid (per-second) serving model for long rate shapes, from the same profile as the request model.

Requests are a continuous flow of `rate(t)` per second with the length mix of a request-level
trace. Each simulated second:

- prefill: the prompt work (engine-seconds, the profiled TTFT per request) joins a backlog that
  the ready engines drain at one engine-second per second each. A request arriving now waits
  `backlog / engines` before its own prefill.
- decode: finished prefills join the admission queue. Requests are admitted while the ready
  pool has KV room for their mean sequence `isl + osl`. The running requests advance at
  `1 / ITL(kv usage, mean context isl + osl/2)` tokens/s and leave after their mean
  `osl - 1` tokens.

A second's arrivals meet the TTFT SLO in the share of the length mix whose prefill time fits
in the SLO after the waits, and the ITL SLO when that second's ITL does. Histograms get the
same distributions, so signals look as they would from Prometheus.

NOTE: Replica readiness and engine counts change at recorder steps (the tick interval or
less), not at the exact second. The decode admission wait is estimated as queue / departure
rate (Little's law).
"""

from __future__ import annotations

import math
from bisect import bisect_left

import numpy as np

from autoscaler.backtest.cluster import ReplicaPool
from autoscaler.backtest.signals import DECODE, ITL_BUCKETS, PREFILL, TTFT_BUCKETS, SignalRecorder, bucket_counts
from autoscaler.backtest.traces import RateShape, Trace
from policies.profile import Profile

_KV_TABLE_POINTS = 201


class FluidServingModel:
    """Per-second fluid model; `advance`, `scale` and `attainment` match the request-level model."""

    def __init__(
        self,
        *,
        profile: Profile,
        lengths: Trace,
        duration_s: float,
        prefill_gpus: float,
        decode_gpus: float,
        initial_prefill: int,
        initial_decode: int,
        cold_start_s: float,
        horizon_s: float,
        ttft_slo_s: float,
        itl_slo_s: float,
        shape: RateShape | None = None,
        trace: Trace | None = None,
        step_s: float = 15.0,
        gpus_per_engine: float = 1.0,
    ) -> None:
        if shape is None and trace is None:
            raise ValueError("the fluid model needs a rate shape or a trace")
        self.profile = profile
        self.ttft_slo_s = ttft_slo_s
        self.itl_slo_s = itl_slo_s
        seconds = int(math.ceil(horizon_s))
        self.seconds = seconds
        self.recorder = SignalRecorder(steps=int(math.ceil(seconds / step_s)), step_s=step_s)
        self._rate = self._rate_per_second(shape, trace, seconds).tolist()

        isl = np.maximum(lengths.isl, 1).astype(float)
        osl = lengths.osl.astype(float)
        service = profile.prefill_service_seconds(isl)
        self._service_sorted = np.sort(service)
        self.service_mean = float(service.mean())
        self.isl_mean = float(isl.mean())
        self.osl_mean = float(osl.mean())
        self.decode_tokens_mean = float(np.maximum(osl - 1, 0).mean())
        self.context = float(np.mean(isl + osl / 2))
        self.engines_per_prefill = max(1, int(round(prefill_gpus / gpus_per_engine)))
        self.decode_capacity = profile.max_kv_tokens * decode_gpus / gpus_per_engine
        self.need_mean = float(np.mean(np.minimum(isl + osl, self.decode_capacity)))
        kv_axis = np.linspace(0.0, 1.0, _KV_TABLE_POINTS)
        self._itl_table = [float(value) for value in profile.decode_itl_seconds(kv_axis, np.full(kv_axis.size, self.context))]

        self.prefill = ReplicaPool(PREFILL, prefill_gpus, cold_start_s)
        self.decode = ReplicaPool(DECODE, decode_gpus, cold_start_s)
        self.prefill.start_warm(initial_prefill)
        self.decode.start_warm(initial_decode)

        self._second = 0
        self._backlog = 0.0
        self._queue = 0.0
        self._running = 0.0
        self._itl = self._itl_table[0]
        self._arrived = 0.0
        self._ttft_ok = 0.0
        self._itl_ok = 0.0
        self._both_ok = 0.0
        self._capacity_cache: tuple[float, float, float] | None = None
        self._capacity_until = -math.inf
        self._itl_bounds = ITL_BUCKETS.tolist()
        service = self._service_sorted
        below = np.searchsorted(service, TTFT_BUCKETS, side="right") / service.size
        self._idle_ttft_shares = np.diff(below, prepend=0.0, append=1.0)
        self._idle_ttft_ok = float(np.searchsorted(service, ttft_slo_s, side="right") / service.size)

    @staticmethod
    def _rate_per_second(shape: RateShape | None, trace: Trace | None, seconds: int) -> np.ndarray:
        if shape is not None:
            return shape.rate_at(np.arange(seconds) + 0.5)
        assert trace is not None
        index = np.minimum(trace.arrival_s.astype(np.int64), seconds - 1)
        return np.bincount(index, minlength=seconds)[:seconds].astype(float)

    # --- replicas ------------------------------------------------------------------------

    def live_replicas(self, role: str) -> int:
        return (self.prefill if role == PREFILL else self.decode).live_count

    def ready_replicas(self, role: str, now: float) -> int:
        """Replicas past their cold start and not draining, as a `/scale` target's ready count."""
        if role == PREFILL:
            return int(self._capacity(now)[0]) // self.engines_per_prefill
        return int(round(self._capacity(now)[1] / self.decode_capacity))

    def scale(self, role: str, replicas: int, now: float) -> None:
        pool = self.prefill if role == PREFILL else self.decode
        _, removed = pool.scale_to(replicas, now)
        self._capacity_cache = None
        for replica in removed:
            if replica.gone_at is not None:
                continue
            if role == PREFILL:
                engines = max(self._ready_engines(now), 1)
                replica.gone_at = now + self._backlog / engines + self.service_mean
            else:
                replica.gone_at = now + self.decode_tokens_mean * self._itl

    def gpu_seconds(self, end: float) -> float:
        return self.prefill.gpu_seconds(0.0, end) + self.decode.gpu_seconds(0.0, end)

    @property
    def pending(self) -> int:
        return 0

    def attainment(self, ttft_slo_s: float, itl_slo_s: float) -> tuple[float, float, float]:
        """Shares of arrived requests meeting both SLOs, TTFT, and ITL (SLOs fixed at construction)."""
        if (ttft_slo_s, itl_slo_s) != (self.ttft_slo_s, self.itl_slo_s):
            raise ValueError("the fluid model scores the SLOs it was built with")
        if self._arrived <= 0:
            return math.nan, math.nan, math.nan
        return self._both_ok / self._arrived, self._ttft_ok / self._arrived, self._itl_ok / self._arrived

    # --- main loop -----------------------------------------------------------------------

    def advance(self, until: float) -> None:
        step_s = self.recorder.step_s
        last = min(int(until + 1e-9), self.seconds)
        while self._second < last:
            chunk_end = min(last, (int(self._second // step_s) + 1) * int(step_s))
            self._advance_chunk(self._second, chunk_end)
            self._second = chunk_end

    def _capacity(self, now: float) -> tuple[float, float, float]:
        """Return (ready prefill engines, KV tokens of decode replicas taking work, KV tokens of
        every decode replica holding work, draining ones included), cached until the replica set
        changes or a cold start or drain ends."""
        if self._capacity_cache is not None and now < self._capacity_until:
            return self._capacity_cache
        engines = len(self.prefill.ready(now)) * self.engines_per_prefill
        serving = len(self.decode.ready(now)) * self.decode_capacity
        holding = 0.0
        events = [math.inf]
        for pool in (self.prefill, self.decode):
            pool.prune(now)
            for replica in pool.current:
                if replica.ready_at > now:
                    events.append(replica.ready_at)
                if replica.gone_at is not None and replica.gone_at > now:
                    events.append(replica.gone_at)
        for replica in self.decode.current:
            if replica.ready_at <= now and (replica.gone_at is None or now < replica.gone_at):
                holding += self.decode_capacity
        self._capacity_cache = (float(engines), serving, holding)
        self._capacity_until = min(events)
        return self._capacity_cache

    def _ready_engines(self, now: float) -> int:
        return int(self._capacity(now)[0])

    def _advance_chunk(self, first: int, last: int) -> None:
        engines, serving_tokens, holding_tokens = self._capacity(first)
        max_running = serving_tokens / self.need_mean
        service_mean = self.service_mean
        context = self.context
        table = self._itl_table
        table_last = len(table) - 1
        decode_tokens_mean = self.decode_tokens_mean
        rate = self._rate
        backlog = self._backlog
        queue = self._queue
        running = self._running
        itl = self._itl
        itl_bounds = self._itl_bounds
        itl_row = [0.0] * (len(itl_bounds) + 1)

        arrivals = rate[first:last]
        waits: list[float] = []
        itls: list[float] = []
        any_wait = False
        usage_sum = 0.0
        departed_sum = 0.0
        itl_weighted = 0.0
        for arriving in arrivals:
            work = arriving * service_mean
            if engines > 0:
                wait = backlog / engines
                processed = backlog + work if backlog + work < engines else engines
            else:
                wait = math.inf
                processed = 0.0
            backlog += work - processed
            queue += processed / service_mean

            # Plain comparisons: this loop runs once per simulated second, and min/max calls cost more.
            space = max_running - running
            if space < 0.0:
                space = 0.0
            admitted = queue if queue < space else space
            queue -= admitted
            running += admitted

            if holding_tokens > 0 and running > 0:
                usage = running * context / holding_tokens
                position = (usage if usage < 1.0 else 1.0) * table_last
                low = int(position)
                if low >= table_last:
                    itl = table[table_last]
                else:
                    fraction = position - low
                    itl = table[low] * (1 - fraction) + table[low + 1] * fraction
            else:
                usage = 0.0
            tokens = running / itl
            departed = tokens / decode_tokens_mean if decode_tokens_mean > 0 else running
            if departed > running:
                departed = running
            running -= departed
            if queue > 1e-9:
                wait += queue / departed if departed > 0 else math.inf
            if wait > 0:
                any_wait = True

            waits.append(wait)
            itls.append(itl)
            itl_row[bisect_left(itl_bounds, itl)] += tokens
            itl_weighted += itl * tokens
            usage_sum += usage
            departed_sum += departed

        self._backlog, self._queue, self._running, self._itl = backlog, queue, running, itl
        step = min(int(first // self.recorder.step_s), self.recorder.steps - 1)
        recorder = self.recorder
        recorder.itl[step] += itl_row
        recorder.itl_sum[step] += itl_weighted
        self._record_requests(step, arrivals, waits, itls, any_wait)
        self._record_gauges(step, last - first, arrivals, usage_sum, departed_sum, engines, holding_tokens)

    def _record_requests(self, step: int, arrivals: list[float], waits: list[float], itls: list[float], any_wait: bool) -> None:
        recorder = self.recorder
        total = sum(arrivals)
        itl_slo = self.itl_slo_s
        itl_ok = sum(arriving for arriving, itl in zip(arrivals, itls) if itl <= itl_slo)
        self._arrived += total
        self._itl_ok += itl_ok
        if not any_wait:
            # No queueing in this step: every request's TTFT is its own prefill time.
            recorder.ttft[step] += self._idle_ttft_shares * total
            recorder.ttft_sum[step] += total * self.service_mean
            recorder.queue[step, 0] += total
            self._ttft_ok += total * self._idle_ttft_ok
            self._both_ok += itl_ok * self._idle_ttft_ok
            return

        service = self._service_sorted
        count = service.size
        arrival_array = np.array(arrivals)
        finite = np.minimum(np.array(waits), 1e12)
        below = np.searchsorted(service, TTFT_BUCKETS[None, :] - finite[:, None], side="right") / count
        shares = np.diff(below, axis=1, prepend=0.0, append=1.0)
        recorder.ttft[step] += arrival_array @ shares
        recorder.ttft_sum[step] += float(arrival_array @ (finite + self.service_mean))
        recorder.queue[step] += bucket_counts(finite, TTFT_BUCKETS, weights=arrival_array)
        recorder.queue_sum[step] += float(arrival_array @ finite)
        ttft_share = np.searchsorted(service, self.ttft_slo_s - finite, side="right") / count
        itl_met = np.array(itls) <= itl_slo
        self._ttft_ok += float(arrival_array @ ttft_share)
        self._both_ok += float(arrival_array[itl_met] @ ttft_share[itl_met])

    def _record_gauges(self, step, seconds, arrivals, usage_sum, departed_sum, engines, holding_tokens) -> None:
        recorder = self.recorder
        total = sum(arrivals)
        recorder.arrivals[step] += total
        recorder.isl_sum[step] += total * self.isl_mean
        recorder.completions[step] += departed_sum
        recorder.osl_sum[step] += departed_sum * self.osl_mean
        recorder.kv_usage[DECODE][step] = usage_sum / seconds if holding_tokens > 0 else math.nan
        recorder.waiting[DECODE][step] = self._queue
        recorder.running[DECODE][step] = self._running
        recorder.waiting[PREFILL][step] = self._backlog / self.service_mean
        in_service = min(engines, total / seconds * self.service_mean) if engines > 0 else 0.0
        recorder.running[PREFILL][step] = in_service
        prefill_tokens = engines * self.profile.max_kv_tokens
        recorder.kv_usage[PREFILL][step] = in_service * self.isl_mean / prefill_tokens if prefill_tokens > 0 else math.nan
