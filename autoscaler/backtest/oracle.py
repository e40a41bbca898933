"""The clairvoyant oracle: the fewest GPUs that carry each window's real load at profiled speed.

For every window of `window_s` seconds the oracle is given the requests that arrive in it and
sizes each role with no cold start and no forecasting error:

- prefill replicas = ceil(sum over the window's requests of the profiled TTFT at their isl
  times the GPUs of one engine, divided by the window and by the replica's GPUs): the GPU
  time the prompts need when every engine is busy all the time;
- decode replicas = ceil(output tokens of the window / window / (best decode tokens/s/GPU
  meeting the ITL SLO at the window's mean context isl + osl/2) / the replica's GPUs), the
  Dynamo planner's decode rule with the true load. The planner may pick a KV usage up to 1.
  The serving models admit a request only with KV room for its whole sequence isl + osl, while
  it holds isl + osl/2 on average, so their KV usage cannot pass the window's
  sum(isl + osl/2) / sum(isl + osl), about 0.92 for the Azure traces. The oracle takes its best
  throughput at or below that usage, which is what the simulated decode pool can reach;
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
        prefill_gpus, decode_gpus, itl_slo_s, window_s, trace.duration_s,
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
        prefill_gpus, decode_gpus, itl_slo_s, shape.window_s, shape.duration_s,
    )


def _kv_need(isl: np.ndarray, osl: np.ndarray, profile: Profile, decode_gpus: float, gpus_per_engine: float) -> np.ndarray:
    # The serving models' admission rule: a sequence longer than a replica's KV takes the whole replica.
    return np.minimum(isl + osl, profile.max_kv_tokens * decode_gpus / gpus_per_engine)


def _size(profile, prefill_gpu_load, output_rate, context, usage, prefill_gpus, decode_gpus, itl_slo_s, window_s, duration_s) -> OracleResult:
    # prefill_gpu_load is GPU-seconds of prompt work per second (one-GPU engines).
    decode_per_gpu = np.array([_best_decode(profile, itl_slo_s, value, limit) for value, limit in zip(context, usage)])
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


_BEST_CACHE: dict[tuple[int, float, int, int], float] = {}

_USAGE_POINTS = 201


def _best_decode(profile: Profile, itl_slo_s: float, context: float, max_usage: float = 1.0) -> float:
    """Return the decode tokens/s/GPU at the highest KV usage up to `max_usage` whose ITL meets the SLO.

    The lookups are the bilinear ones the serving models use. When no usage meets the SLO, the
    lowest-load throughput is returned, as the Dynamo planner does.
    """
    # Context rounded to 64 tokens and usage to 0.005: the profile grid is coarser than that.
    usage_step = int(min(max(max_usage, 0.0), 1.0) * 200)
    key = (id(profile), itl_slo_s, int(context // 64), usage_step)
    if key not in _BEST_CACHE:
        kv = np.linspace(0.0, usage_step / 200, _USAGE_POINTS)
        contexts = np.full(kv.size, float(context))
        meeting = np.nonzero(profile.decode_itl_seconds(kv, contexts) <= itl_slo_s)[0]
        index = int(meeting[-1]) if meeting.size else 0
        throughput = float(profile.decode_throughput_per_gpu(kv[index : index + 1], contexts[:1])[0])
        _BEST_CACHE[key] = max(throughput, 1e-9)
    return _BEST_CACHE[key]
