"""Built-in comparison policies, derived from the rules of the first configured policy set.

Each baseline keeps the rules' targets, bounds and series labels, reads its signals through the
vLLM metric preset, and replaces the policies:

- `static-peak`: no autoscaler; every role runs the oracle's peak replica count all the time.
- `hpa-kv-cache`: the registry's `kv-cache` policy (target usage 0.8) on every target, every
  15 s, as an HPA on the KV-cache gauge. It has the HPA's default behaviour. Scale-up has no
  stabilisation and at most 4 pods or 100 % per 15 s. Scale-down has a 300 s stabilisation
  window and at most 100 % per 15 s.
- `dynamo-planner`: the registry's `dynamo-compatible` policy, the Dynamo SLA planner's
  throughput formulas with the constant predictor, adjusting every 180 s over a 180 s
  window, with no stabilisation and no rate limit, as the planner writes its counts directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from autoscaler.config import Config, parse_config
from policies.registry import default_registry

logger = logging.getLogger(__name__)

STATIC = "static-peak"
HPA_KV_CACHE = "hpa-kv-cache"
DYNAMO = "dynamo-planner"

BASELINE_PRESET = "vllm"

# An empty `behavior`, which the engine reads as every HPA default of autoscaling/v2.
HPA_DEFAULT_BEHAVIOR: dict[str, Any] = {}

# The planner applies its counts as computed: no stabilisation, no rate limit worth the name.
DIRECT_BEHAVIOR: dict[str, Any] = {
    "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Percent", "value": 10000, "periodSeconds": 15}]},
    "scaleDown": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]},
}


@dataclass(frozen=True)
class PolicySet:
    """One policy set to backtest: a validated configuration, or fixed replicas per role (static)."""

    name: str
    config: Config
    static_replicas: Mapping[str, int] | None = None


def _with_policies(config: Config, policies_for_rule, *, interval: float, window: float, behavior: dict[str, Any]) -> Config:
    data = config.model_dump(by_alias=True, exclude_none=True, mode="json")
    data["intervalSeconds"] = interval
    # The simulator computes every signal, so a baseline reads the vLLM preset, which names each
    # signal its policy needs, whatever preset or custom signals the user's set uses.
    data["metrics"] = {"preset": BASELINE_PRESET, "windowSeconds": int(window)}
    for rule in data["targets"]:
        rule["policies"] = policies_for_rule(rule)
        rule["behavior"] = behavior
    return parse_config(data, "<backtest baseline>")


def hpa_kv_cache(config: Config) -> PolicySet:
    policies = lambda rule: [{"name": "kv-cache", "params": {"target_utilisation": 0.8}}]  # noqa: E731
    return PolicySet(HPA_KV_CACHE, _with_policies(config, policies, interval=15, window=60, behavior=HPA_DEFAULT_BEHAVIOR))


def dynamo_planner(
    config: Config,
    roles: Mapping[str, str],
    gpus: Mapping[str, float],
    *,
    ttft_slo_s: float,
    itl_slo_s: float,
    profile_dir: Path | None,
) -> PolicySet | None:
    """Return the Dynamo planner baseline, or None with a warning when `dynamo-compatible` is not registered.

    `roles` and `gpus` map each rule name to its role and GPUs per replica.
    """
    if "dynamo-compatible" not in default_registry():
        logger.warning("policy dynamo-compatible is not registered; the %s baseline is skipped", DYNAMO)
        return None

    def policies(rule: dict[str, Any]) -> list[dict[str, Any]]:
        params: dict[str, Any] = {
            "role": roles[rule["name"]],
            "ttft_slo_seconds": ttft_slo_s,
            "itl_slo_seconds": itl_slo_s,
            "adjustment_interval_seconds": 180,
            "gpus_per_engine": max(1, int(round(gpus[rule["name"]]))),
            "predictor": {"kind": "constant"},
        }
        if profile_dir is not None:
            params["profile_dir"] = str(profile_dir)
        return [{"name": "dynamo-compatible", "params": params}]

    return PolicySet(DYNAMO, _with_policies(config, policies, interval=180, window=180, behavior=DIRECT_BEHAVIOR))


def static_peak(config: Config, replicas: Mapping[str, int]) -> PolicySet:
    return PolicySet(STATIC, config, static_replicas=dict(replicas))
