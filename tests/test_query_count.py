"""The number of PromQL queries per tick does not grow with the number of targets."""

import copy

import pytest
import yaml

from autoscaler.config import parse_config
from autoscaler.controller import Controller
from autoscaler.kube import KubeClient
from metrics.prometheus import PrometheusSource
from tests.fixtures.prometheus import T0, Backfill

NAMESPACE = "default"


def config(url: str):
    rule = {"podCliqueSets": {"namespace": NAMESPACE, "selector": {"matchLabels": {"fleet": "bench"}}}}
    return parse_config(
        {
            "metrics": {"prometheus": {"url": url}, "preset": "dynamo"},
            "targets": [
                {**rule, "name": "prefill", "level": "scalingGroup", "scalingGroup": "prefill", "maxReplicas": 8,
                 "policies": [{"name": "latency-slo", "params": {"signal": "ttft_p90", "slo_seconds": 0.5}}]},
                {**rule, "name": "decode", "level": "scalingGroup", "scalingGroup": "decode", "maxReplicas": 8,
                 "policies": [{"name": "latency-slo", "params": {"signal": "itl_p90", "slo_seconds": 0.05}},
                              {"name": "kv-cache", "params": {"target_utilisation": 0.8}}]},
            ],
        }
    )


def podcliquesets(shared_dir, count: int) -> list[dict]:
    template = yaml.safe_load((shared_dir / "grove" / "multi-node-disaggregated.yaml").read_text())
    objects = []
    for index in range(count):
        pcs = copy.deepcopy(template)
        pcs["metadata"]["name"] = f"fleet-{index}"
        pcs["metadata"]["labels"] = {"fleet": "bench"}
        objects.append(pcs)
    return objects


@pytest.mark.parametrize("count", [1, 12])
def test_queries_per_tick_do_not_grow(kube_emulator, shared_dir, prometheus_server, count):
    kube_emulator.apply_manifest(podcliquesets(shared_dir, count))
    data = Backfill()
    for index in range(count):
        labels = {"namespace": NAMESPACE, "grove_io_podcliquescalinggroup": f"fleet-{index}-0-decode"}
        data.steady_gauge("dynamo_component_kvstats_gpu_cache_usage_percent", labels, value=0.5, start=T0, end=T0 + 600)
    server = prometheus_server(data)
    source = PrometheusSource.from_config(config(server.url).metrics)
    controller = Controller(config(server.url), KubeClient(kube_emulator.api_client()), source, clock=lambda: T0 + 300, dry_run=True)

    result = controller.tick()

    assert len(result.decisions) == 2 * count
    # ttft_p90, itl_p90 and kv_cache_usage: one query each, for 2 or for 24 targets.
    assert source.queries_made == 3
