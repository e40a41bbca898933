"""End to end over all three Grove levels of the `multinode-disaggregated-with-frontend.yaml` sample.

The controller runs tick by tick on a fixed clock inside backfilled data in the real Prometheus
binary, against the emulated API whose Grove operator creates and deletes children. The manifest
copy adds GPU requests (prefill: 4 GPUs per gang replica) and a Grove `scaleConfig` on the decode
scaling group, so Grove owns that target through its own HPA.
"""

import copy

import pytest
import yaml

from autoscaler.config import parse_config
from autoscaler.controller import Controller
from autoscaler.kube import KubeClient
from metrics.prometheus import PrometheusSource
from tests.fixtures.prometheus import T0, Backfill

NAMESPACE = "default"
PCS = "mn-disagg"
FRONTEND_0 = f"{PCS}-0-frontend"
PREFILL_0 = f"{PCS}-0-prefill"
DECODE_0 = f"{PCS}-0-decode"
PREFILL_BUDGET_GPUS = 24
GPUS_PER_PREFILL_REPLICA = 4


def manifest(shared_dir) -> dict:
    pcs = yaml.safe_load((shared_dir / "grove" / "multinode-disaggregated-with-frontend.yaml").read_text())
    pcs = copy.deepcopy(pcs)
    for clique in pcs["spec"]["template"]["cliques"]:
        if clique["name"] in ("pleader", "pworker", "dleader", "dworker"):
            for container in clique["spec"]["podSpec"]["containers"]:
                container["resources"]["requests"]["nvidia.com/gpu"] = "1"
                container["resources"]["limits"] = {"nvidia.com/gpu": "1"}
    for group in pcs["spec"]["template"]["podCliqueScalingGroups"]:
        if group["name"] == "decode":
            group["scaleConfig"] = {"maxReplicas": 3, "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}
    return pcs


def config(prometheus_url: str):
    rule = {"podCliqueSets": {"namespace": NAMESPACE, "names": [PCS]}}
    return parse_config(
        {
            "intervalSeconds": 15,
            "metrics": {"prometheus": {"url": prometheus_url}, "preset": "dynamo", "windowSeconds": 60},
            "targets": [
                {
                    **rule,
                    "name": "system",
                    "level": "podcliqueset",
                    "minReplicas": 1,
                    "maxReplicas": 2,
                    "policies": [{"name": "target", "params": {"signal": "request_rate", "type": "AverageValue", "value": 50}}],
                },
                {
                    **rule,
                    "name": "frontend",
                    "level": "clique",
                    "clique": {"name": "frontend"},
                    "maxReplicas": 6,
                    "policies": [{"name": "target", "params": {"signal": "requests_waiting", "type": "AverageValue", "value": 5}}],
                },
                {
                    **rule,
                    "name": "prefill",
                    "level": "scalingGroup",
                    "scalingGroup": "prefill",
                    "maxReplicas": 8,
                    "policies": [{"name": "latency-slo", "params": {"signal": "ttft_p90", "slo_seconds": 0.5}}],
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
                },
                {
                    **rule,
                    "name": "decode",
                    "level": "scalingGroup",
                    "scalingGroup": "decode",
                    "maxReplicas": 8,
                    "policies": [{"name": "latency-slo", "params": {"signal": "itl_p90", "slo_seconds": 0.05}}],
                },
            ],
            "budgets": [{"name": "prefill-gpus", "maxGpus": PREFILL_BUDGET_GPUS, "rules": ["system", "prefill"]}],
        }
    )


def backfill() -> Backfill:
    """Fifteen minutes of load: 90 req/s into the system, 16 queued at the frontend, TTFT p90 1.5 s."""
    span = {"start": T0, "end": T0 + 900, "step": 15}
    data = Backfill()
    data.steady_counter("dynamo_frontend_requests_started_total", {"namespace": NAMESPACE, "app_kubernetes_io_part_of": PCS}, rate=90, **span)
    data.steady_gauge("dynamo_frontend_queued_requests", {"namespace": NAMESPACE, "grove_io_podclique": FRONTEND_0}, value=16, **span)
    data.dynamo_frontend({"namespace": NAMESPACE, "grove_io_podcliquescalinggroup": PREFILL_0}, request_rate=20, ttft_seconds=1.5, **span)
    data.dynamo_frontend({"namespace": NAMESPACE, "grove_io_podcliquescalinggroup": DECODE_0}, request_rate=20, itl_seconds=0.2, **span)
    return data


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(kube_emulator, shared_dir, prometheus_server):
    kube_emulator.apply_manifest(manifest(shared_dir))
    server = prometheus_server(backfill())
    clock = Clock(T0 + 600)
    source = PrometheusSource.from_config(config(server.url).metrics)
    controller = Controller(config(server.url), KubeClient(kube_emulator.api_client()), source, clock=clock)
    return kube_emulator, controller, clock


def spec_replicas(emulator, plural, name):
    return emulator.get(plural, NAMESPACE, name)["spec"]["replicas"]


def prefill_gpus(emulator) -> int:
    groups = emulator.list("podcliquescalinggroups", NAMESPACE)
    return sum(group["spec"]["replicas"] * GPUS_PER_PREFILL_REPLICA for group in groups if group["metadata"]["name"].endswith("-prefill"))


def assert_invariants(emulator):
    """Every clique at or above its minAvailable; prefill GPUs within the budget."""
    for clique in emulator.list("podcliques", NAMESPACE):
        spec = clique["spec"]
        assert spec["replicas"] >= spec.get("minAvailable", spec["replicas"]), clique["metadata"]["name"]
    for group in emulator.list("podcliquescalinggroups", NAMESPACE):
        spec = group["spec"]
        assert spec["replicas"] >= spec.get("minAvailable", 1), group["metadata"]["name"]
    assert prefill_gpus(emulator) <= PREFILL_BUDGET_GPUS


def test_three_levels_scaled_independently(setup):
    emulator, controller, clock = setup
    assert_invariants(emulator)

    result = controller.tick()
    assert result.errors == []

    # Level 1: the PodCliqueSet grows to 2 on 90 req/s at 50 per replica; Grove adds index 1.
    assert spec_replicas(emulator, "podcliquesets", PCS) == 2
    assert f"{PCS}-1-frontend" in emulator.names("podcliques", NAMESPACE)
    # Level 2: a standalone clique of index 0, 16 queued at 5 per pod.
    assert spec_replicas(emulator, "podcliques", FRONTEND_0) == 4
    # Level 3: prefill wants 6 gangs. The budget of 24 GPUs also pays for the new PodCliqueSet
    # replica at template GPUs (11: two prefill gangs of 4, one decode gang of 3), which leaves
    # 13 GPUs, so 3 gangs of 4 for index 0.
    assert spec_replicas(emulator, "podcliquescalinggroups", PREFILL_0) == 3
    decision = next(d for d in result.decisions if d.target.endswith(PREFILL_0))
    assert [adjustment.step for adjustment in decision.adjustments][-1] == "budget"
    assert_invariants(emulator)


def test_grove_owned_target_is_left_alone(setup):
    emulator, controller, _ = setup
    result = controller.tick()

    assert all(not decision.target.endswith(DECODE_0) for decision in result.decisions)
    assert spec_replicas(emulator, "podcliquescalinggroups", DECODE_0) == 1
    skipped = [event for event in emulator.list("events", NAMESPACE) if event["reason"] == "ScaleSkipped"]
    assert {event["involvedObject"]["name"] for event in skipped} >= {DECODE_0}
    assert "pcs-hpa" in skipped[0]["message"] or "scaleConfig" in skipped[0]["message"]


def test_outside_change_corrected_next_tick(setup):
    emulator, controller, clock = setup
    controller.tick()
    assert spec_replicas(emulator, "podcliques", FRONTEND_0) == 4

    # Grove's recovery resets every child of index 0 to template values.
    emulator.recover(PCS, NAMESPACE, replica_index=0)
    assert spec_replicas(emulator, "podcliques", FRONTEND_0) == 2
    assert spec_replicas(emulator, "podcliquescalinggroups", PREFILL_0) == 2

    clock.now += 15
    result = controller.tick()
    assert result.errors == []
    assert spec_replicas(emulator, "podcliques", FRONTEND_0) == 4
    assert spec_replicas(emulator, "podcliquescalinggroups", PREFILL_0) >= 3
    outside = [event for event in emulator.list("events", NAMESPACE) if event["reason"] == "ScaleChangedOutside"]
    assert {event["involvedObject"]["name"] for event in outside} >= {FRONTEND_0}
    assert_invariants(emulator)


def test_nothing_written_when_equal(setup):
    emulator, controller, clock = setup
    controller.tick()
    emulator.clear_requests()

    clock.now += 15
    controller.tick()
    patches = [record.path for record in emulator.requests_matching("PATCH", r"/scale$")]
    assert all(not path.endswith(f"/{FRONTEND_0}/scale") for path in patches)
    assert all(not path.endswith(f"/{PCS}/scale") for path in patches)
