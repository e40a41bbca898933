"""Measure one controller tick over 1,000 PodCliqueSets (5,000 targets).

Each PodCliqueSet has a scaling group and three standalone cliques, and a rule per level
selects them all: the PodCliqueSet itself, the group and each clique, 5 targets per set.
The tick runs against the real prometheus binary (backfilled series for every target) and
the in-repo API emulator, both on 127.0.0.1, each in its own process. It prints wall time
per tick, PromQL queries per tick and the peak RSS of the controller's process.

Run from the project root:  python benchmarks/tick_bench.py [--podcliquesets 1000] [--ticks 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kubernetes.client  # noqa: E402

from autoscaler.config import parse_config  # noqa: E402
from autoscaler.controller import Controller  # noqa: E402
from autoscaler.kube import KubeClient  # noqa: E402
from metrics.prometheus import PrometheusSource  # noqa: E402
from tests.fixtures.prometheus import T0, Backfill, start_prometheus  # noqa: E402
from tests.kube_emulator import KubeEmulator, load_crds  # noqa: E402

NAMESPACE = "bench"
CLIQUES = ("frontend", "router", "decode")


def podcliqueset(index: int) -> dict:
    def clique(name: str, replicas: int) -> dict:
        container = {"name": name, "image": "registry.example/worker:1", "resources": {"requests": {"nvidia.com/gpu": "1"}}}
        return {"name": name, "spec": {"roleName": name, "replicas": replicas, "podSpec": {"containers": [container]}}}

    return {
        "apiVersion": "grove.io/v1alpha1",
        "kind": "PodCliqueSet",
        "metadata": {"name": f"svc-{index}", "namespace": NAMESPACE, "labels": {"fleet": "bench"}},
        "spec": {
            "replicas": 1,
            "template": {
                "cliques": [clique(name, 2) for name in CLIQUES] + [clique("pleader", 1), clique("pworker", 2)],
                "podCliqueScalingGroups": [{"name": "prefill", "cliqueNames": ["pleader", "pworker"], "replicas": 1}],
            },
        },
    }


def config(url: str):
    selector = {"podCliqueSets": {"namespace": NAMESPACE, "selector": {"matchLabels": {"fleet": "bench"}}}}
    kv = [{"name": "kv-cache", "params": {"target_utilisation": 0.8}}]
    targets = [
        {**selector, "name": "system", "level": "podcliqueset", "maxReplicas": 4,
         "policies": [{"name": "target", "params": {"signal": "request_rate", "type": "AverageValue", "value": 100}}]},
        {**selector, "name": "prefill", "level": "scalingGroup", "scalingGroup": "prefill", "maxReplicas": 8,
         "policies": [{"name": "latency-slo", "params": {"signal": "ttft_p90", "slo_seconds": 0.5}}]},
    ]
    targets += [
        {**selector, "name": name, "level": "clique", "clique": {"name": name}, "maxReplicas": 8, "policies": kv} for name in CLIQUES
    ]
    return parse_config({"metrics": {"prometheus": {"url": url, "timeoutSeconds": 30}, "preset": "dynamo"}, "targets": targets})


def backfill(count: int) -> Backfill:
    data = Backfill()
    span = {"start": T0, "end": T0 + 300, "step": 30}
    for index in range(count):
        data.steady_counter("dynamo_frontend_requests_started_total", {"namespace": NAMESPACE, "app_kubernetes_io_part_of": f"svc-{index}"}, rate=80, **span)
        data.steady_histogram(
            "dynamo_frontend_time_to_first_token_seconds",
            {"namespace": NAMESPACE, "grove_io_podcliquescalinggroup": f"svc-{index}-0-prefill"},
            rate=5,
            observations=0.3,
            buckets=(0.1, 0.25, 0.5, 1.0),
            **span,
        )
        for name in CLIQUES:
            labels = {"namespace": NAMESPACE, "grove_io_podclique": f"svc-{index}-0-{name}"}
            data.steady_gauge("dynamo_component_kvstats_gpu_cache_usage_percent", labels, value=0.5, **span)
    return data


def serve_emulator(shared: Path, workdir: Path, count: int, urls, stop) -> None:
    """Run the emulator with `count` PodCliqueSets in this (child) process until `stop` is set."""
    emulator = KubeEmulator(load_crds(shared), workdir=workdir)
    emulator.start()
    emulator.apply_manifest([podcliqueset(index) for index in range(count)])
    urls.put(emulator.url)
    stop.wait()
    emulator.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--podcliquesets", type=int, default=1000, help="number of PodCliqueSets (default 1000)")
    parser.add_argument("--ticks", type=int, default=3, help="ticks to time after the first (default 3)")
    args = parser.parse_args()

    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "grove"
    workdir = Path(tempfile.mkdtemp(prefix="tick-bench-"))
    print(f"machine: {platform.machine()}, {platform.processor() or 'unknown cpu'}, python {platform.python_version()}")

    started = time.perf_counter()
    urls, stop = multiprocessing.Queue(), multiprocessing.Event()
    emulator = multiprocessing.Process(target=serve_emulator, args=(shared, workdir / "kube", args.podcliquesets, urls, stop))
    emulator.start()
    server = start_prometheus(workdir / "prometheus", backfill=backfill(args.podcliquesets))
    url = urls.get(timeout=600)
    print(f"setup: {time.perf_counter() - started:.1f} s for {args.podcliquesets} PodCliqueSets")

    try:
        cfg = config(server.url)
        source = PrometheusSource.from_config(cfg.metrics)
        configuration = kubernetes.client.Configuration()
        configuration.host = url
        kube = KubeClient(kubernetes.client.ApiClient(configuration))
        controller = Controller(cfg, kube, source, clock=lambda: T0 + 240, dry_run=True)
        first = time.perf_counter()
        result = controller.tick()
        print(f"first tick: {time.perf_counter() - first:.2f} s, {len(result.decisions)} targets, {source.queries_made} queries, {len(result.errors)} errors")
        durations = []
        for _ in range(args.ticks):
            before = source.queries_made
            tick_start = time.perf_counter()
            controller.tick()
            durations.append(time.perf_counter() - tick_start)
            queries = source.queries_made - before
        print(f"steady ticks: {', '.join(f'{d:.2f}' for d in durations)} s; {queries} PromQL queries per tick")
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of the controller process: {peak_mib:.0f} MiB")
    finally:
        server.stop()
        stop.set()
        emulator.join(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
