"""Request-level serving model of a disaggregated deployment, driven by a Dynamo profile.

A replica with G GPUs runs `G / gpus_per_engine` engines of the profiled configuration. The
profile describes one engine, and the bundled one has one GPU per engine. So capacity scales with
GPUs as in the Dynamo planner, and latency at low load is the profiled latency.

Prefill: all prefill engines form one FIFO queue with several servers (Dynamo workers pull
from a shared prefill queue). A request starts when it heads the queue and an engine is free,
and takes the profiled TTFT at its input length (so an engine serves `isl / TTFT(isl)` prompt
tokens/s, the profiled prefill throughput at the profiled lengths). Each request is one loop
iteration over a heap of engine free times, the only per-request Python work.

Decode: the ready replicas are pooled. A request is admitted when the pool has room for its
whole sequence (`isl + osl` tokens, so nothing is ever preempted), otherwise it waits in a
FIFO admission queue, and its first token is emitted at admission. All running requests
advance at one rate, `1 / ITL(kv usage, context)` tokens/s, where kv usage is the tokens held
(prompt plus generated so far) over the pool's KV capacity and context is the mean tokens per
running request. The rate is re-evaluated every `step_s` seconds. Every running request
advances at the same rate, so each request's finish is a point on the pool's "virtual"
progress: the progress at its admission plus its tokens. The running requests are numpy
arrays of these points, and a step costs a few array operations, never work per token.
Each admitted request is assigned a replica round-robin, so the model can tell when a draining
replica's last request ends.

TTFT = prefill queueing + prefill service + decode admission wait. A request's ITL is its
decode time divided by its `osl - 1` generated tokens.

NOTE: The pooled decode assumes the router keeps KV usage balanced across replicas, and
freed KV is reused at the next step boundary or next arrival, not at the exact finish time.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass

import numpy as np

from autoscaler.backtest.cluster import ReplicaPool
from autoscaler.backtest.signals import DECODE, ITL_BUCKETS, PREFILL, TTFT_BUCKETS, SignalRecorder
from autoscaler.backtest.traces import Trace
from policies.profile import Profile


@dataclass(frozen=True)
class RequestOutcome:
    """Per-request latencies; NaN where a request had not got that far by the end of the run."""

    ttft_s: np.ndarray
    itl_s: np.ndarray
    finished: np.ndarray


class EventServingModel:
    """Simulates a trace request by request; `advance` runs it up to a time, `scale` changes replicas."""

    def __init__(
        self,
        *,
        trace: Trace,
        profile: Profile,
        prefill_gpus: float,
        decode_gpus: float,
        initial_prefill: int,
        initial_decode: int,
        cold_start_s: float,
        horizon_s: float,
        step_s: float = 1.0,
        gpus_per_engine: float = 1.0,
    ) -> None:
        self.profile = profile
        self.step_s = step_s
        self.horizon_s = horizon_s
        self.recorder = SignalRecorder(steps=int(math.ceil(horizon_s / step_s)), step_s=step_s)

        count = trace.requests
        isl = np.maximum(trace.isl, 1).astype(float)
        self.arrival = trace.arrival_s.astype(float)
        self.isl = isl
        self.osl = trace.osl.astype(float)
        self.decode_tokens = np.maximum(trace.osl - 1, 0).astype(float)
        self.prefill_engines = max(1, int(round(prefill_gpus / gpus_per_engine)))
        self.service = profile.prefill_service_seconds(isl)
        self.decode_capacity = profile.max_kv_tokens * decode_gpus / gpus_per_engine
        self.prefill_capacity = profile.max_kv_tokens * prefill_gpus / gpus_per_engine
        # A sequence longer than one replica's KV cache could never be admitted and would
        # block the FIFO forever. So it reserves one full replica instead.
        self.need = np.minimum(isl + self.osl, self.decode_capacity)

        self.start = np.full(count, np.nan)
        self.prefill_end = np.full(count, np.nan)
        self.first_token = np.full(count, np.nan)
        self.finish = np.full(count, np.nan)
        self._unfinished = count

        self.prefill = ReplicaPool(PREFILL, prefill_gpus, cold_start_s)
        self.decode = ReplicaPool(DECODE, decode_gpus, cold_start_s)
        self._init_prefill(initial_prefill)
        self._init_decode(initial_decode)
        self._record_arrivals()

    # --- replicas ------------------------------------------------------------------------

    def live_replicas(self, role: str) -> int:
        return (self.prefill if role == PREFILL else self.decode).live_count

    def ready_replicas(self, role: str, now: float) -> int:
        """Replicas past their cold start and not draining, as a `/scale` target's ready count."""
        return len((self.prefill if role == PREFILL else self.decode).ready(now))

    def scale(self, role: str, replicas: int, now: float) -> None:
        self.prefill.prune(now)
        self.decode.prune(now)
        if role == PREFILL:
            added, removed = self.prefill.scale_to(replicas, now)
            for replica in added:
                self._add_engines(replica.id, replica.ready_at)
            for replica in removed:
                self._removed.add(replica.id)
                if replica.gone_at is None:
                    busy = max(self._engine_busy[engine] for engine in self._engines_of[replica.id])
                    replica.gone_at = max(now, busy)
            return
        added, removed = self.decode.scale_to(replicas, now)
        self._grow_replica_arrays()
        for replica in removed:
            if replica.gone_at is None and self._active_per_replica[replica.id] == 0:
                replica.gone_at = now
        self._update_draining()
        self._serving_changed = True

    def gpu_seconds(self, end: float) -> float:
        return self.prefill.gpu_seconds(0.0, end) + self.decode.gpu_seconds(0.0, end)

    # --- main loop -----------------------------------------------------------------------

    def advance(self, until: float) -> None:
        """Simulate up to `until` seconds (rounded down to a whole step)."""
        last_step = min(int(until / self.step_s + 1e-9), self.recorder.steps)
        if last_step <= self._step:
            return
        first = self._next_prefill
        self._run_prefill(last_step * self.step_s)
        self._queue_for_decode(first, self._next_prefill)
        self._record_prefill_gauges(self._step, last_step)
        admitted: list[np.ndarray] = []
        completed: list[np.ndarray] = []
        for step in range(self._step, last_step):
            self._decode_step(step, admitted, completed)
        self._record_first_tokens(admitted)
        self._record_completions(completed)
        self._step = last_step

    def outcome(self) -> RequestOutcome:
        first_token = self.first_token
        finish = self.finish
        with np.errstate(invalid="ignore", divide="ignore"):
            itl = np.where(self.decode_tokens > 0, (finish - first_token) / np.maximum(self.decode_tokens, 1), 0.0)
        itl = np.where(np.isnan(finish), np.nan, itl)
        return RequestOutcome(ttft_s=first_token - self.arrival, itl_s=itl, finished=~np.isnan(finish))

    def attainment(self, ttft_slo_s: float, itl_slo_s: float) -> tuple[float, float, float]:
        """Return the shares of all requests meeting both SLOs, the TTFT SLO, and the ITL SLO.

        A request unfinished at the end of the run fails every SLO it has not met yet.
        """
        outcome = self.outcome()
        if outcome.ttft_s.size == 0:
            return math.nan, math.nan, math.nan
        with np.errstate(invalid="ignore"):
            ttft_ok = outcome.ttft_s <= ttft_slo_s
            itl_ok = outcome.itl_s <= itl_slo_s
        return float(np.mean(ttft_ok & itl_ok)), float(np.mean(ttft_ok)), float(np.mean(itl_ok))

    @property
    def pending(self) -> int:
        """Requests not finished yet (arrived or not)."""
        return self._unfinished

    # --- prefill -------------------------------------------------------------------------

    def _init_prefill(self, count: int) -> None:
        self._heap: list[tuple[float, int]] = []
        self._engine_owner: list[int] = []
        self._engine_busy: list[float] = []
        self._engines_of: dict[int, list[int]] = {}
        self._removed: set[int] = set()
        self._next_prefill = 0
        self._arrival_list = self.arrival.tolist()
        self._service_list = self.service.tolist()
        for replica in self.prefill.start_warm(count):
            self._add_engines(replica.id, 0.0)

    def _add_engines(self, replica: int, ready_at: float) -> None:
        engines = self._engines_of.setdefault(replica, [])
        for _ in range(self.prefill_engines):
            engine = len(self._engine_owner)
            heapq.heappush(self._heap, (ready_at, engine))
            self._engine_owner.append(replica)
            self._engine_busy.append(ready_at)
            engines.append(engine)

    def _run_prefill(self, end: float) -> None:
        # Start times of a FIFO queue never decrease, so every request before
        # `_next_prefill` has started and the rest wait for a later interval.
        heap = self._heap
        removed = self._removed
        owner = self._engine_owner
        engine_busy = self._engine_busy
        arrival = self._arrival_list
        service = self._service_list
        heapreplace = heapq.heapreplace
        count = len(arrival)
        index = self._next_prefill
        starts: list[float] = []
        ends: list[float] = []
        while index < count:
            arrived = arrival[index]
            if arrived >= end:
                break

            if removed:
                while heap and owner[heap[0][1]] in removed:
                    heapq.heappop(heap)
            if not heap:
                break
            free_at, engine = heap[0]
            begin = arrived if arrived > free_at else free_at
            if begin >= end:
                break

            done = begin + service[index]
            heapreplace(heap, (done, engine))
            engine_busy[engine] = done
            starts.append(begin)
            ends.append(done)
            index += 1

        first = self._next_prefill
        self.start[first:index] = starts
        self.prefill_end[first:index] = ends
        self._next_prefill = index

    def _record_prefill_gauges(self, first_step: int, last_step: int) -> None:
        times = np.arange(first_step + 1, last_step + 1) * self.step_s
        recorder = self.recorder
        starts = self.start[: self._next_prefill]
        arrived = np.searchsorted(self.arrival, times, side="right")
        started = np.searchsorted(starts, times, side="right")
        recorder.waiting[PREFILL][first_step:last_step] = arrived - started

        # In service at t: started by t and not finished by t. Only requests that started
        # within one service time of the interval can still be running.
        window_start = times[0] - self.step_s - float(self.service.max(initial=0.0))
        low = int(np.searchsorted(starts, window_start, side="left"))
        begin = starts[low:]
        order = np.argsort(self.prefill_end[low : self._next_prefill], kind="stable")
        finish = self.prefill_end[low : self._next_prefill][order]
        isl = self.isl[low : self._next_prefill]
        begun = np.searchsorted(begin, times, side="right")
        ended = np.searchsorted(finish, times, side="right")
        recorder.running[PREFILL][first_step:last_step] = begun - ended
        isl_begun = np.concatenate([[0.0], np.cumsum(isl)])[begun]
        isl_ended = np.concatenate([[0.0], np.cumsum(isl[order])])[ended]
        ready = np.array([len(self.prefill.ready(time)) for time in times], dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            usage = np.where(ready > 0, (isl_begun - isl_ended) / (ready * self.prefill_capacity), np.nan)
        recorder.kv_usage[PREFILL][first_step:last_step] = usage

    # --- decode --------------------------------------------------------------------------

    def _init_decode(self, count: int) -> None:
        self._virtual = 0.0
        self._round_robin = 0
        self._active_per_replica = np.zeros(0)
        self._reserved_per_replica = np.zeros(0)
        self._serving_changed = True
        self._serving = np.zeros(0, dtype=np.int64)
        self._free = 0.0
        self._holding = 0.0
        self._next_ready = math.inf
        self._pending_time = np.zeros(0)
        self._pending_index = np.zeros(0, dtype=np.int64)
        self._queue = np.zeros(0, dtype=np.int64)
        # Running requests: index, replica, virtual admission and finish points.
        self._run_index = np.zeros(0, dtype=np.int64)
        self._run_replica = np.zeros(0, dtype=np.int64)
        self._run_admit = np.zeros(0)
        self._run_finish = np.zeros(0)
        self._sum_isl = 0.0
        self._sum_admit = 0.0
        self._step = 0
        self.decode.start_warm(count)
        self._grow_replica_arrays()
        self._update_draining()
        self._idle_itl = self.profile.decode_itl_seconds(0.0, float(self.profile.decode_context.min()))

    def _grow_replica_arrays(self) -> None:
        missing = len(self.decode.replicas) - self._active_per_replica.size
        if missing > 0:
            self._active_per_replica = np.concatenate([self._active_per_replica, np.zeros(missing)])
            self._reserved_per_replica = np.concatenate([self._reserved_per_replica, np.zeros(missing)])

    def _queue_for_decode(self, first: int, last: int) -> None:
        if last <= first:
            return
        times = np.concatenate([self._pending_time, self.prefill_end[first:last]])
        indices = np.concatenate([self._pending_index, np.arange(first, last)])
        order = np.argsort(times, kind="stable")
        self._pending_time = times[order]
        self._pending_index = indices[order]

    def _refresh_serving(self, now: float) -> None:
        if not self._serving_changed and now < self._next_ready:
            return
        serving = [replica.id for replica in self.decode.ready(now)]
        self._serving = np.array(serving, dtype=np.int64)
        reserved = float(self._reserved_per_replica[self._serving].sum())
        self._free = len(serving) * self.decode_capacity - reserved
        self._holding = sum(self.decode_capacity for r in self.decode.current if r.ready_at <= now and r.gone_at is None)
        pending = [replica.ready_at for replica in self.decode.live() if replica.ready_at > now]
        self._next_ready = min(pending) if pending else math.inf
        self._serving_changed = False

    def _decode_step(self, step: int, admitted: list[np.ndarray], completed: list[np.ndarray]) -> None:
        now = step * self.step_s
        end = now + self.step_s
        self._refresh_serving(now)

        if self._queue.size:
            self._admit_queue(now, admitted)

        count = self._run_index.size
        if count and self._holding > 0:
            held_tokens = self._sum_isl + count * self._virtual - self._sum_admit
            usage = held_tokens / self._holding
            itl = self.profile.decode_itl_seconds(usage, held_tokens / count)
        else:
            usage = 0.0 if self._holding > 0 else math.nan
            itl = self._idle_itl
        rate = 1.0 / itl

        self._admit_arrivals(now, end, rate, admitted)
        tokens = self._advance(now, rate, completed)

        recorder = self.recorder
        bucket = bisect_left(self._itl_bounds, itl)
        recorder.itl[step, bucket] += tokens
        recorder.itl_sum[step] += itl * tokens
        recorder.kv_usage[DECODE][step] = usage
        recorder.waiting[DECODE][step] = self._queue.size
        recorder.running[DECODE][step] = self._run_index.size

    def _admit_queue(self, now: float, admitted: list[np.ndarray]) -> None:
        if self._free <= 0 or self._serving.size == 0:
            return
        fits = int(np.searchsorted(np.cumsum(self.need[self._queue]), self._free, side="right"))
        if fits:
            indices = self._queue[:fits]
            self._queue = self._queue[fits:]
            self._admit(indices, np.full(fits, now), now, 0.0, admitted)

    def _admit_arrivals(self, now: float, end: float, rate: float, admitted: list[np.ndarray]) -> None:
        split = int(np.searchsorted(self._pending_time, end, side="left"))
        if split == 0:
            return
        times = np.maximum(self._pending_time[:split], now)
        indices = self._pending_index[:split]
        self._pending_time = self._pending_time[split:]
        self._pending_index = self._pending_index[split:]

        # A one-token response is complete at the end of prefill and never reaches decode.
        single = self.decode_tokens[indices] == 0
        if single.any():
            done = indices[single]
            self.first_token[done] = times[single]
            self.finish[done] = times[single]
            self._unfinished -= done.size
            admitted.append(done)
            times = times[~single]
            indices = indices[~single]
            if indices.size == 0:
                return

        if self._queue.size or self._serving.size == 0:
            self._queue = np.concatenate([self._queue, indices])
            return
        fits = int(np.searchsorted(np.cumsum(self.need[indices]), self._free, side="right"))
        if fits:
            self._admit(indices[:fits], times[:fits], now, rate, admitted)
        if fits < indices.size:
            self._queue = np.concatenate([self._queue, indices[fits:]])

    def _admit(self, indices: np.ndarray, times: np.ndarray, now: float, rate: float, admitted: list[np.ndarray]) -> None:
        serving = self._serving
        replicas = serving[(self._round_robin + np.arange(indices.size)) % serving.size]
        self._round_robin = (self._round_robin + indices.size) % serving.size
        need = self.need[indices]
        size = self._active_per_replica.size
        self._active_per_replica += np.bincount(replicas, minlength=size)
        self._reserved_per_replica += np.bincount(replicas, weights=need, minlength=size)
        self._free -= float(need.sum())
        admit = self._virtual + rate * (times - now)
        self._run_index = np.concatenate([self._run_index, indices])
        self._run_replica = np.concatenate([self._run_replica, replicas])
        self._run_admit = np.concatenate([self._run_admit, admit])
        self._run_finish = np.concatenate([self._run_finish, admit + self.decode_tokens[indices]])
        self._sum_isl += float(self.isl[indices].sum())
        self._sum_admit += float(admit.sum())
        self.first_token[indices] = times
        admitted.append(indices)

    def _advance(self, now: float, rate: float, completed: list[np.ndarray]) -> float:
        """Move the pool one step at `rate` tokens/s per request; return the tokens generated."""
        if self._run_index.size == 0:
            return 0.0
        start = self._virtual
        end = start + rate * self.step_s
        tokens = float(np.sum(np.minimum(self._run_finish, end) - np.maximum(self._run_admit, start)))
        self._virtual = end
        done = self._run_finish <= end + 1e-9
        if not done.any():
            return tokens

        indices = self._run_index[done]
        replicas = self._run_replica[done]
        need = self.need[indices]
        finished_at = now + (self._run_finish[done] - start) / rate
        self.finish[indices] = np.maximum(finished_at, self.first_token[indices])
        self._unfinished -= indices.size
        size = self._active_per_replica.size
        freed = np.bincount(replicas, weights=need, minlength=size)
        self._active_per_replica -= np.bincount(replicas, minlength=size)
        self._reserved_per_replica -= freed
        self._free += float(freed[self._serving].sum())
        drained = self._draining_busy and bool(np.any(self._active_per_replica[self._draining_ids] <= 0))
        self._sum_isl -= float(self.isl[indices].sum())
        self._sum_admit -= float(self._run_admit[done].sum())
        keep = ~done
        self._run_index = self._run_index[keep]
        self._run_replica = self._run_replica[keep]
        self._run_admit = self._run_admit[keep]
        self._run_finish = self._run_finish[keep]
        if self._run_index.size == 0:
            self._sum_isl = 0.0
            self._sum_admit = 0.0
        completed.append(indices)
        if drained:
            self._retire_drained(now + self.step_s)
        return tokens

    def _retire_drained(self, now: float) -> None:
        for replica in self.decode.current:
            if replica.draining and replica.gone_at is None and self._active_per_replica[replica.id] <= 0:
                replica.gone_at = now
                self._serving_changed = True
        self._update_draining()

    def _update_draining(self) -> None:
        ids = [replica.id for replica in self.decode.current if replica.draining and replica.gone_at is None]
        self._draining_ids = np.array(ids, dtype=np.int64)
        self._draining_busy = bool(ids)

    # --- signal records ------------------------------------------------------------------

    _itl_bounds = ITL_BUCKETS.tolist()

    def _record_arrivals(self) -> None:
        steps = np.minimum((self.arrival / self.step_s).astype(np.int64), self.recorder.steps - 1)
        size = self.recorder.steps
        self.recorder.arrivals += np.bincount(steps, minlength=size)[:size]
        self.recorder.isl_sum += np.bincount(steps, weights=self.isl, minlength=size)[:size]

    def _steps_of(self, times: np.ndarray) -> np.ndarray:
        return np.minimum((times / self.step_s).astype(np.int64), self.recorder.steps - 1)

    def _record_first_tokens(self, admitted: list[np.ndarray]) -> None:
        if not admitted:
            return
        indices = np.concatenate(admitted)
        first_token = self.first_token[indices]
        ttft = first_token - self.arrival[indices]
        # Clamped at 0: the subtraction of two nearly equal times leaves rounding noise like -2e-15 s.
        queue = np.maximum(ttft - self.service[indices], 0.0)
        steps = self._steps_of(first_token)
        recorder = self.recorder
        _add_histogram(recorder.ttft, steps, ttft, TTFT_BUCKETS)
        _add_histogram(recorder.queue, steps, queue, TTFT_BUCKETS)
        np.add.at(recorder.ttft_sum, steps, ttft)
        np.add.at(recorder.queue_sum, steps, queue)

    def _record_completions(self, completed: list[np.ndarray]) -> None:
        if not completed:
            return
        indices = np.concatenate(completed)
        steps = self._steps_of(self.finish[indices])
        np.add.at(self.recorder.completions, steps, 1.0)
        np.add.at(self.recorder.osl_sum, steps, self.osl[indices])


def _add_histogram(rows: np.ndarray, steps: np.ndarray, values: np.ndarray, bounds: np.ndarray) -> None:
    """Add one observation per value to row `steps[i]` of a per-step bucket-count table."""
    buckets = np.searchsorted(bounds, values, side="left")
    width = rows.shape[1]
    low = int(steps.min())
    counts = np.bincount((steps - low) * width + buckets)
    height = -(-counts.size // width)
    block = np.zeros(height * width)
    block[: counts.size] = counts
    rows[low : low + height] += block.reshape(height, width)
