"""End to end: `grove-autoscaler run --once` against the real Prometheus binary and the emulated API.

Prometheus holds Dynamo-style TTFT/ITL histograms and KV gauges for the PodCliqueSet of the
Grove sample `multi-node-disaggregated.yaml`, written with timestamps just before now, so the
CLI's own wall clock falls inside the data.
"""

import time

import pytest
import yaml

from autoscaler.cli import main
from tests.fixtures.prometheus import Backfill

NAMESPACE = "default"
PCS = "multinode-disaggregated"
PREFILL = f"{PCS}-0-prefill"
DECODE = f"{PCS}-0-decode"
SCALE_PATH = r"/apis/grove\.io/v1alpha1/namespaces/default/[a-z]+/[^/]+/scale$"


def group_labels(name: str) -> dict[str, str]:
    return {"namespace": NAMESPACE, "grove_io_podcliquescalinggroup": name}


def write_config(tmp_path, prometheus_url: str, *, decode_kv_target: float = 0.8) -> str:
    config = {
        "intervalSeconds": 15,
        "metrics": {"prometheus": {"url": prometheus_url, "timeoutSeconds": 5}, "preset": "dynamo", "windowSeconds": 60},
        "targets": [
            {
                "name": "prefill",
                "podCliqueSets": {"namespace": NAMESPACE, "names": [PCS]},
                "level": "scalingGroup",
                "scalingGroup": "prefill",
                "maxReplicas": 8,
                "policies": [{"name": "latency-slo", "params": {"signal": "ttft_p90", "slo_seconds": 0.5}}],
            },
            {
                "name": "decode",
                "podCliqueSets": {"namespace": NAMESPACE, "names": [PCS]},
                "level": "scalingGroup",
                "scalingGroup": "decode",
                "maxReplicas": 8,
                "policies": [
                    {"name": "latency-slo", "params": {"signal": "itl_p90", "slo_seconds": 0.05}},
                    {"name": "kv-cache", "params": {"target_utilisation": decode_kv_target}},
                ],
            },
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def recent_backfill(*, prefill_ttft: float, decode_itl: float, decode_kv: float) -> Backfill:
    """Ten minutes of steady traffic ending 5 s before now."""
    end = time.time() - 5
    span = {"start": end - 600, "end": end, "step": 15}
    backfill = Backfill()
    backfill.dynamo_frontend(group_labels(PREFILL), request_rate=8, ttft_seconds=prefill_ttft, **span)
    backfill.dynamo_frontend(group_labels(DECODE), request_rate=8, itl_seconds=decode_itl, **span)
    backfill.steady_gauge("dynamo_component_kvstats_gpu_cache_usage_percent", group_labels(DECODE), value=decode_kv, **span)
    return backfill


@pytest.fixture
def cluster(kube_emulator, shared_dir):
    kube_emulator.apply_manifest(shared_dir / "grove" / "multi-node-disaggregated.yaml")
    kube_emulator.clear_requests()
    return kube_emulator


def replicas(emulator, plural: str, name: str) -> int:
    return emulator.get(plural, NAMESPACE, name)["spec"]["replicas"]


def scale_patches(emulator):
    return [(record.path.split("/")[-2], record.body["spec"]["replicas"]) for record in emulator.requests_matching("PATCH", SCALE_PATH)]


def test_run_once_scales_exactly_the_expected_objects(cluster, prometheus_server, tmp_path):
    """TTFT p90 of 1 s against a 500 ms SLO doubles prefill; decode is within its SLO and KV target."""
    server = prometheus_server(recent_backfill(prefill_ttft=1.0, decode_itl=0.02, decode_kv=0.6))
    config = write_config(tmp_path, server.url)

    assert replicas(cluster, "podcliquescalinggroups", PREFILL) == 2
    assert main(["run", "--once", "--config", config, "--kubeconfig", str(cluster.kubeconfig)]) == 0

    assert scale_patches(cluster) == [(PREFILL, 4)]
    assert replicas(cluster, "podcliquescalinggroups", PREFILL) == 4
    assert replicas(cluster, "podcliquescalinggroups", DECODE) == 1
    # The emulated Grove operator created the new gang members of prefill replicas 2 and 3.
    assert f"{PCS}-0-prefill-3-pworker" in cluster.names("podcliques", NAMESPACE)

    events = cluster.list("events", NAMESPACE)
    scaled = [event for event in events if event["involvedObject"]["name"] == PREFILL]
    assert [event["reason"] for event in scaled] == ["ScaledUp"]
    assert "2 -> 4" in scaled[0]["message"]
    assert "ttft_p90" in scaled[0]["message"]


def test_run_once_dry_run_writes_nothing(cluster, prometheus_server, tmp_path):
    server = prometheus_server(recent_backfill(prefill_ttft=1.0, decode_itl=0.02, decode_kv=0.6))
    config = write_config(tmp_path, server.url)

    assert main(["run", "--once", "--dry-run", "--config", config, "--kubeconfig", str(cluster.kubeconfig)]) == 0

    assert scale_patches(cluster) == []
    assert cluster.requests_matching("POST", r"/events$") == []
    assert replicas(cluster, "podcliquescalinggroups", PREFILL) == 2


def test_prometheus_down_never_scales_down(cluster, prometheus_server, tmp_path):
    """A failed read is unknown: with Prometheus stopped, no object is written at all."""
    server = prometheus_server(recent_backfill(prefill_ttft=0.05, decode_itl=0.005, decode_kv=0.05))
    config = write_config(tmp_path, server.url)
    server.stop()

    # Exit 1: every signal is unknown, which --once reports as an error.
    assert main(["run", "--once", "--config", config, "--kubeconfig", str(cluster.kubeconfig)]) == 1

    assert scale_patches(cluster) == []
    assert replicas(cluster, "podcliquescalinggroups", PREFILL) == 2


def test_label_mismatch_holds(cluster, prometheus_server, tmp_path):
    """Series under another namespace label give no series for our targets: hold, never act."""
    end = time.time() - 5
    backfill = Backfill()
    wrong = {"namespace": "Default", "grove_io_podcliquescalinggroup": PREFILL}
    backfill.dynamo_frontend(wrong, request_rate=8, ttft_seconds=0.01, start=end - 600, end=end, step=15)
    server = prometheus_server(backfill)
    config = write_config(tmp_path, server.url)

    assert main(["run", "--once", "--config", config, "--kubeconfig", str(cluster.kubeconfig)]) == 1

    assert scale_patches(cluster) == []


def test_conflict_is_retried_on_a_fresh_read(cluster, prometheus_server, tmp_path):
    server = prometheus_server(recent_backfill(prefill_ttft=1.0, decode_itl=0.02, decode_kv=0.6))
    config = write_config(tmp_path, server.url)
    cluster.inject_fault(method="PATCH", path_regex=r"/scale$", status=409, count=1)

    assert main(["run", "--once", "--config", config, "--kubeconfig", str(cluster.kubeconfig)]) == 0

    assert replicas(cluster, "podcliquescalinggroups", PREFILL) == 4
    assert len(cluster.requests_matching("GET", r"/podcliquescalinggroups/[^/]+/scale$")) == 1


def test_error_on_one_target_does_not_stop_another(cluster, prometheus_server, tmp_path):
    """Prefill's patch fails with 500; decode still scales on KV pressure."""
    server = prometheus_server(recent_backfill(prefill_ttft=1.0, decode_itl=0.02, decode_kv=0.95))
    config = write_config(tmp_path, server.url, decode_kv_target=0.5)
    cluster.inject_fault(method="PATCH", path_regex=rf"/{PREFILL}/scale$", status=500, count=10)

    # Exit 1 reports the failed write of prefill.
    assert main(["run", "--once", "--config", config, "--kubeconfig", str(cluster.kubeconfig)]) == 1

    assert replicas(cluster, "podcliquescalinggroups", PREFILL) == 2
    assert replicas(cluster, "podcliquescalinggroups", DECODE) == 2
