"""Controller behaviour under API faults: isolation per target and honest rate-limit history."""

import pytest

from autoscaler.config import ScalingRules, parse_config
from autoscaler.controller import Controller
from autoscaler.kube import KubeClient
from metrics.prometheus import PrometheusSource
from tests.fixtures.prometheus import T0, Backfill

PCS = "multinode-disaggregated"
PREFILL = f"{PCS}-0-prefill"
DECODE = f"{PCS}-0-decode"


def labels(name: str) -> dict[str, str]:
    return {"namespace": "default", "grove_io_podcliquescalinggroup": name}


def config(url: str):
    rule = {"podCliqueSets": {"namespace": "default", "names": [PCS]}, "level": "scalingGroup", "maxReplicas": 10,
            # The HPA's default behavior: at most +4 pods or +100 % per 15 s.
            "behavior": {"scaleUp": {}}}
    return parse_config({
        "metrics": {"prometheus": {"url": url}, "preset": "dynamo"},
        "targets": [
            {**rule, "name": "prefill", "scalingGroup": "prefill",
             "policies": [{"name": "latency-slo", "params": {"signal": "ttft_p90", "slo_seconds": 0.5}}]},
            {**rule, "name": "decode", "scalingGroup": "decode",
             "policies": [{"name": "kv-cache", "params": {"target_utilisation": 0.5}}]},
        ],
    })


@pytest.fixture
def controller(kube_emulator, shared_dir, prometheus_server):
    kube_emulator.apply_manifest(shared_dir / "grove" / "multi-node-disaggregated.yaml")
    data = Backfill()
    data.dynamo_frontend(labels(PREFILL), request_rate=10, ttft_seconds=2.0, start=T0, end=T0 + 900)
    data.steady_gauge("dynamo_component_kvstats_gpu_cache_usage_percent", labels(DECODE), value=0.95, start=T0, end=T0 + 900)
    server = prometheus_server(data)
    clock = {"now": T0 + 600}
    cfg = config(server.url)
    built = Controller(cfg, KubeClient(kube_emulator.api_client(), timeout_seconds=5), PrometheusSource.from_config(cfg.metrics),
                       clock=lambda: clock["now"])
    return kube_emulator, built, clock


def replicas(emulator, name):
    return emulator.get("podcliquescalinggroups", "default", name)["spec"]["replicas"]


def test_failed_write_not_counted_by_rate_limit(controller):
    emulator, ctl, clock = controller
    emulator.inject_fault(method="PATCH", path_regex=rf"/{PREFILL}/scale$", status=500, count=1)

    first = ctl.tick()
    assert replicas(emulator, PREFILL) == 2
    assert any(PREFILL in error for error in first.errors)

    # Five seconds later the failed 2 -> 6 must not use up the 15 s scale-up budget.
    clock["now"] += 5
    ctl.tick()
    assert replicas(emulator, PREFILL) == 6


def test_dropped_connection_isolated_to_its_target(controller):
    emulator, ctl, _ = controller
    emulator.inject_fault(method="PATCH", path_regex=rf"/{PREFILL}/scale$", drop_connection=True, count=None)

    result = ctl.tick()

    assert replicas(emulator, PREFILL) == 2
    assert replicas(emulator, DECODE) == 2
    assert any(PREFILL in error for error in result.errors)


def test_dropped_event_post_does_not_stop_the_tick(controller):
    emulator, ctl, _ = controller
    emulator.inject_fault(method="POST", path_regex=r"/events$", drop_connection=True, count=None)

    result = ctl.tick()

    assert replicas(emulator, PREFILL) == 6
    assert replicas(emulator, DECODE) == 2
    assert result.errors == []


def test_slow_list_times_out_and_holds(controller):
    emulator, ctl, _ = controller
    ctl.kube.timeout = 1
    emulator.inject_fault(method="GET", path_regex=r"/podcliquescalinggroups$", delay_seconds=3, count=None)

    result = ctl.tick()

    assert result.decisions == []
    assert any("listing objects" in error for error in result.errors)
    assert replicas(emulator, PREFILL) == 2


class RaisingSource:
    """A metric source that breaks its contract by raising."""

    def fetch(self, requests, now=None):
        raise RuntimeError("source bug")


def test_raising_source_holds_every_target(controller):
    emulator, ctl, _ = controller
    ctl.source = RaisingSource()

    result = ctl.tick()

    assert len(result.decisions) == 2
    assert all(decision.desired == decision.current for decision in result.decisions)
    assert any("reading signals failed: RuntimeError: source bug" in error for error in result.errors)
    assert replicas(emulator, PREFILL) == 2


def test_shrinks_written_before_grows(kube_emulator, shared_dir, prometheus_server):
    """Prefill grows and decode shrinks in one tick; the decode patch reaches the API first."""
    kube_emulator.apply_manifest(shared_dir / "grove" / "multi-node-disaggregated.yaml")
    kube_emulator.api.patch_scale(kube_emulator.resource_type("podcliquescalinggroups"), "default", DECODE,
                                  {"spec": {"replicas": 4}}, "application/merge-patch+json")
    data = Backfill()
    data.dynamo_frontend(labels(PREFILL), request_rate=10, ttft_seconds=2.0, start=T0, end=T0 + 900)
    data.steady_gauge("dynamo_component_kvstats_gpu_cache_usage_percent", labels(DECODE), value=0.1, start=T0, end=T0 + 900)
    server = prometheus_server(data)
    cfg = config(server.url)
    # Scale-down without a window, so decode shrinks in this tick.
    cfg = cfg.model_copy(update={"targets": [
        target.model_copy(update={"behavior": target.behavior.model_copy(update={"scale_down": ScalingRules.model_validate({"stabilizationWindowSeconds": 0})})})
        for target in cfg.targets
    ]})
    controller = Controller(cfg, KubeClient(kube_emulator.api_client()), PrometheusSource.from_config(cfg.metrics), clock=lambda: T0 + 600)
    kube_emulator.clear_requests()

    controller.tick()

    patched = [record.path.split("/")[-2] for record in kube_emulator.requests_matching("PATCH", r"/scale$")]
    assert patched == [DECODE, PREFILL]
    assert replicas(kube_emulator, DECODE) < 4
    assert replicas(kube_emulator, PREFILL) > 2
