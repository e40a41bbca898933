"""The clairvoyant oracle: the fewest GPUs that carry each window's real load at profiled speed.

For every window of `window_s` seconds the oracle is given the requests that arrive in it and
sizes each role with no cold start and no forecasting error:

- prefill replicas = ceil(sum over the window's requests of the prefill time at their isl
  times the GPUs of one engine, divided by the window and by the replica's GPUs): the GPU
  time the prompts need when every engine is busy all the time. The prefill time is the
  profiled TTFT, extrapolated linearly above the profile's longest input;
- decode replicas = ceil(output tokens of the window / window / (best decode tokens/s/GPU
  meeting the ITL SLO at the window's mean context isl + osl/2) / the replica's GPUs), the
  Dynamo planner's decode rule with the true load, except for how the best throughput is
  found. It is running requests / ITL at the best KV usage, as in the serving models, not the
  profile's throughput table (see `_best_decode`). The usage is capped at
  sum(isl + osl/2) / sum(isl + osl) of the window, about 0.92 for the Azure traces. The serving
  models admit a request only with KV room for its whole sequence, and a request occupies
  isl + osl/2 on average, so no higher usage is reachable;
- at least one replica per role, because a Grove scaling group cannot go to zero.

Its GPU-hours are the sum over windows of the GPUs of those replicas times the window. It
is a lower bound for a policy that meets the SLOs only as far as the profile's throughput is
the most a GPU can do at that latency. A policy that misses its SLOs can use fewer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autoscaler.backtest.traces import RateShape, Trace
from policies.profile import Profile


@dataclass(frozen=True)
class OracleResult:
    window_s: float
    prefill_replicas: np.ndarray
    decode_replicas: np.ndarray
    gpus: np.ndarray
    gpu_hours: float
    peak_gpu_need: float
    """Peak fractional GPUs of work in one window (before rounding to replicas)."""


def oracle_for_trace(
    trace: Trace,
    profile: Profile,
    *,
    prefill_gpus: float,
    decode_gpus: float,
    itl_slo_s: float,
    window_s: float = 60.0,
    gpus_per_engine: float = 1.0,
) -> OracleResult:
    windows = max(1, int(math.ceil(trace.duration_s / window_s)))
    index = np.minimum((trace.arrival_s / window_s).astype(np.int64), windows - 1)
    isl = np.maximum(trace.isl, 1).astype(float)
    osl = trace.osl.astype(float)
    prefill_seconds = np.bincount(index, weights=profile.prefill_service_seconds(isl) * gpus_per_engine, minlength=windows)
    output_tokens = np.bincount(index, weights=osl, minlength=windows)
    requests = np.bincount(index, minlength=windows)
    context_sum = np.bincount(index, weights=isl + osl / 2, minlength=windows)
    need = _kv_need(isl, osl, profile, decode_gpus, gpus_per_engine)
    need_sum = np.bincount(index, weights=need, minlength=windows)
    with np.errstate(invalid="ignore", divide="ignore"):
        context = np.where(requests > 0, context_sum / np.maximum(requests, 1), float(np.mean(isl + osl / 2)))
        usage = np.where(requests > 0, context_sum / np.maximum(need_sum, 1e-9), float(np.sum(isl + osl / 2) / np.sum(need)))
    return _size(
        profile, prefill_seconds / window_s, output_tokens / window_s, context, usage,
        prefill_gpus, decode_gpus, itl_slo_s, window_s, trace.duration_s, gpus_per_engine,
    )


def oracle_for_shape(
    shape: RateShape,
    lengths: Trace,
    profile: Profile,
    *,
    prefill_gpus: float,
    decode_gpus: float,
    itl_slo_s: float,
    gpus_per_engine: float = 1.0,
) -> OracleResult:
    """Size each rate-shape window with the mean per-request work of the lengths trace."""
    isl = np.maximum(lengths.isl, 1).astype(float)
    osl = lengths.osl.astype(float)
    prefill_per_request = float(np.mean(profile.prefill_service_seconds(isl))) * gpus_per_engine
    output_per_request = float(np.mean(osl))
    context = np.full(shape.rate.size, float(np.mean(isl + osl / 2)))
    usage = np.full(shape.rate.size, float(np.sum(isl + osl / 2) / np.sum(_kv_need(isl, osl, profile, decode_gpus, gpus_per_engine))))
    return _size(
        profile, shape.rate * prefill_per_request, shape.rate * output_per_request, context, usage,
        prefill_gpus, decode_gpus, itl_slo_s, shape.window_s, shape.duration_s, gpus_per_engine,
    )


def _kv_need(isl: np.ndarray, osl: np.ndarray, profile: Profile, decode_gpus: float, gpus_per_engine: float) -> np.ndarray:
    # The serving models' admission rule: a sequence longer than a replica's KV takes the whole replica.
    return np.minimum(isl + osl, profile.max_kv_tokens * decode_gpus / gpus_per_engine)


def _size(profile, prefill_gpu_load, output_rate, context, usage, prefill_gpus, decode_gpus, itl_slo_s, window_s, duration_s, gpus_per_engine) -> OracleResult:
    # prefill_gpu_load is GPU-seconds of prompt work per second (one-GPU engines).
    decode_per_gpu = np.array([_best_decode(profile, itl_slo_s, value, limit, gpus_per_engine) for value, limit in zip(context, usage)])
    decode_gpu_load = output_rate / decode_per_gpu
    prefill = np.maximum(1, np.ceil(prefill_gpu_load / prefill_gpus - 1e-9)).astype(int)
    decode = np.maximum(1, np.ceil(decode_gpu_load / decode_gpus - 1e-9)).astype(int)
    gpus = prefill * prefill_gpus + decode * decode_gpus
    lengths = np.full(gpus.size, window_s)
    lengths[-1] = max(0.0, duration_s - window_s * (gpus.size - 1))
    return OracleResult(
        window_s=window_s,
        prefill_replicas=prefill,
        decode_replicas=decode,
        gpus=gpus,
        gpu_hours=float(np.sum(gpus * lengths) / 3600.0),
        peak_gpu_need=float(np.max(prefill_gpu_load + decode_gpu_load)),
    )


_BEST_CACHE: dict[tuple[int, float, int, int, float], float] = {}

_USAGE_POINTS = 201


def _best_decode(profile: Profile, itl_slo_s: float, context: float, max_usage: float = 1.0, gpus_per_engine: float = 1.0) -> float:
    """Return the most decode tokens/s/GPU at a KV usage up to `max_usage` whose ITL meets the SLO.

    Throughput is running requests / ITL, with running = usage x KV tokens / context, as in the
    serving models. The profile's throughput table is not used. Outside the profiled points its
    grid repeats the nearest point, often one of a shorter context with more requests in flight,
    so it promises more tokens/s than its ITL allows at that usage. When no usage meets the SLO,
    the lowest usage is taken, as the Dynamo planner does.
    """
    # Context rounded to 64 tokens and usage to 0.005: the profile grid is coarser than that.
    usage_step = int(min(max(max_usage, 0.0), 1.0) * 200)
    key = (id(profile), itl_slo_s, int(context // 64), usage_step, gpus_per_engine)
    if key not in _BEST_CACHE:
        # The bucket's upper edge: a longer context is slower, so the oracle never overstates throughput.
        context = (int(context // 64) + 1) * 64
        kv = np.linspace(0.0, usage_step / 200, _USAGE_POINTS)[1:]
        itl = profile.decode_itl_seconds(kv, np.full(kv.size, context))
        throughput = kv * profile.max_kv_tokens / gpus_per_engine / context / itl
        meeting = itl <= itl_slo_s
        best = float(np.max(throughput[meeting])) if np.any(meeting) else float(throughput[0])
        _BEST_CACHE[key] = max(best, 1e-9)
    return _BEST_CACHE[key]
