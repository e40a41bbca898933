"""Warnings about workload parts that the serving model cannot simulate faithfully, or no policy can serve.

The backtest still runs in every case here. The warnings go to the table and the JSON report, so
a reader can tell which numbers are estimates and what attainment no policy can exceed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from autoscaler.backtest.runner import PolicyOutcome, Settings, Workload
from policies.profile import Profile


def workload_warnings(workload: Workload, profile: Profile, settings: Settings, *, decode_gpus: float) -> list[str]:
    """Return warnings about the workload's requests measured against the profile and the SLOs.

    For a rate shape the counts are shares of the length mix it draws from.
    """
    lengths = workload.trace if workload.trace is not None else workload.lengths
    if lengths is None or lengths.requests == 0:
        return []
    isl = np.maximum(lengths.isl, 1).astype(float)
    osl = lengths.osl.astype(float)
    subject = "requests" if workload.trace is not None else f"requests of the length mix ({lengths.name})"
    total = isl.size
    warnings = []

    longest = profile.isl_range[1]
    longer = int(np.count_nonzero(isl > longest))
    if longer:
        warnings.append(
            f"{_share(longer, total)} {subject} have prompts longer than the profile's longest input of {longest:.0f} tokens "
            f"(up to {isl.max():.0f}); their prefill time is a linear extrapolation, so it is an estimate"
        )

    service = profile.prefill_service_seconds(isl)
    slow = int(np.count_nonzero(service > settings.ttft_slo_s))
    if slow:
        ceiling = 1.0 - slow / total
        warnings.append(
            f"{_share(slow, total)} {subject} need more than the TTFT SLO of {settings.ttft_slo_s:g} s for their prefill alone "
            f"(up to {service.max():.3g} s), so no policy can meet their TTFT: attainment is at most {ceiling * 100:.1f}%"
        )

    replica_kv = profile.max_kv_tokens * decode_gpus / settings.gpus_per_engine
    oversized = int(np.count_nonzero(isl + osl > replica_kv))
    if oversized:
        warnings.append(
            f"{_share(oversized, total)} {subject} need more KV cache (input + output up to {np.max(isl + osl):.0f} tokens) than a "
            f"decode replica has ({replica_kv:.0f} tokens); the model runs each of them on one whole replica, so their decode is an estimate"
        )

    fastest = float(np.min(profile.decode_itl_ms)) / 1000.0
    if fastest > settings.itl_slo_s:
        warnings.append(
            f"no point of the profile {profile.directory} meets the ITL SLO of {settings.itl_slo_s * 1000:g} ms (fastest "
            f"{fastest * 1000:.3g} ms), so no request can meet it and decode is sized at the profile's lowest load"
        )
    return warnings


def outcome_warnings(outcomes: Sequence[PolicyOutcome]) -> list[str]:
    """Return a warning for every policy that left requests unfinished at the end of the run."""
    return [
        f"policy {outcome.policy} left {outcome.unfinished} requests unfinished at the end of the run; they count as missing the SLOs they had not met"
        for outcome in outcomes
        if outcome.unfinished > 0
    ]


def _share(count: int, total: int) -> str:
    return f"{count} of {total} ({count / total * 100:.2g}%)"
