"""Latency of the external metrics adapter under a fixed request rate on loopback.

The adapter runs in a child process, with the test suite's Kubernetes API emulator for the
SubjectAccessReviews. The parent sends an open-loop load of GETs at `--rate` requests per
second over keep-alive HTTPS connections. Each request authenticates like the kube-aggregator,
with a front-proxy client certificate plus X-Remote-User. The run stops after
`--max-requests` requests or `--duration` seconds, whichever comes first.

Latency is measured from the moment a request was scheduled, so a server that falls behind
shows it in the tail instead of silently lowering the rate.

    python3 benchmarks/adapter_bench.py --rate 500 --duration 10 --max-requests 5000
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from autoscaler.adapter import Authenticator, MetricStore, RequestHeaderConfig, serve_adapter  # noqa: E402
from autoscaler.adapter.tls import CertificateAuthority  # noqa: E402
from autoscaler.engine import Decision  # noqa: E402
from metrics.sample import Sample  # noqa: E402

NAMESPACE = "llm"
HPA_USER = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
TARGETS = 50


def serve(directory: str, shared_dir: str, ready: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    """Run the emulator and the adapter until `stop` is set (child process)."""
    from tests.kube_emulator import KubeEmulator, load_crds

    emulator = KubeEmulator(load_crds(Path(shared_dir) / "grove"), workdir=Path(directory) / "emulator")
    emulator.start()
    emulator.allow(user=HPA_USER, verbs=["get"], api_group="external.metrics.k8s.io", namespace=NAMESPACE)

    front_proxy_ca = Path(directory, "front-proxy-ca.crt").read_bytes()
    auth = Authenticator(
        api_client=emulator.api_client(),
        requestheader=RequestHeaderConfig(front_proxy_ca, allowed_names=("front-proxy-client",)),
    )
    store = MetricStore()
    now = time.time()
    samples = {"itl_p90": Sample.of(0.042), "ttft_p90": Sample.of(0.8), "kv_cache_usage": Sample.of(0.61)}
    store.publish(
        now,
        [Decision(now, f"{NAMESPACE}/podclique/pcs-{index}-decode", "decode", 2, 3, "bench", samples=samples) for index in range(TARGETS)],
    )
    server, thread = serve_adapter(
        store,
        host="127.0.0.1",
        port=0,
        cert_file=str(Path(directory, "serving.crt")),
        key_file=str(Path(directory, "serving.key")),
        auth=auth,
    )
    ready.put(server.server_address[1])
    stop.wait()
    server.shutdown()
    server.server_close()
    emulator.stop()


class Load:
    """Open-loop request schedule shared by the worker threads."""

    def __init__(self, *, rate: float, max_requests: int, duration: float) -> None:
        self.rate = rate
        self.max_requests = max_requests
        self.duration = duration
        self.start = time.monotonic() + 0.2
        self._next = 0
        self._lock = threading.Lock()
        self.latencies: list[float] = []
        self.service_times: list[float] = []
        self.errors: dict[str, int] = {}

    def next_slot(self) -> tuple[int, float] | None:
        with self._lock:
            index = self._next
            scheduled = self.start + index / self.rate
            if index >= self.max_requests or scheduled - self.start >= self.duration:
                return None
            self._next += 1
            return index, scheduled

    def record(self, latency: float, service_time: float, error: str | None) -> None:
        with self._lock:
            if error is None:
                self.latencies.append(latency)
                self.service_times.append(service_time)
            else:
                self.errors[error] = self.errors.get(error, 0) + 1


def worker(load: Load, port: int, context: ssl.SSLContext) -> None:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    headers = {"X-Remote-User": HPA_USER, "X-Remote-Group": "system:serviceaccounts"}
    while (slot := load.next_slot()) is not None:
        index, scheduled = slot
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        path = (
            f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/grove_autoscaler_desired_replicas"
            f"?labelSelector=grove_io_target_name%3Dpcs-{index % TARGETS}-decode"
        )
        sent = time.monotonic()
        error = None
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200 or b'"value":"3"' not in body:
                error = f"HTTP {response.status}"
        except (OSError, http.client.HTTPException) as failure:
            error = type(failure).__name__
            connection.close()
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        done = time.monotonic()
        load.record(done - scheduled, done - sent, error)
    connection.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, {platform.system()} {platform.release()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second (default 500)")
    parser.add_argument("--duration", type=float, default=10.0, help="maximum run time in seconds (default 10)")
    parser.add_argument("--max-requests", type=int, default=5000, help="maximum number of requests (default 5000)")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections, one per client thread (default 8)")
    parser.add_argument("--shared-dir", default=str(PROJECT_ROOT.parent / "shared"), help="folder with grove/ CRDs for the emulator")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()
    if args.rate <= 0 or args.duration <= 0 or args.max_requests <= 0 or args.connections <= 0:
        parser.error("--rate, --duration, --max-requests and --connections must be positive")

    # Other processes on the machine lengthen the tail; the load average puts numbers in context.
    load_average = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="adapter-bench-") as directory:
        serving_ca = CertificateAuthority("bench-serving-ca")
        serving_ca.issue_server(("127.0.0.1",)).write(directory, "serving")
        front_proxy_ca = CertificateAuthority("bench-front-proxy-ca")
        Path(directory, "front-proxy-ca.crt").write_bytes(front_proxy_ca.cert_pem)
        client_cert, client_key = front_proxy_ca.issue_client("front-proxy-client").write(directory, "front-proxy-client")
        serving_ca_file = Path(directory, "serving-ca.crt")
        serving_ca_file.write_bytes(serving_ca.cert_pem)

        ready: multiprocessing.Queue = multiprocessing.Queue()
        stop = multiprocessing.Event()
        server = multiprocessing.Process(target=serve, args=(directory, args.shared_dir, ready, stop), daemon=True)
        server.start()
        try:
            port = ready.get(timeout=30)
            context = ssl.create_default_context(cafile=str(serving_ca_file))
            context.load_cert_chain(client_cert, client_key)

            load = Load(rate=args.rate, max_requests=args.max_requests, duration=args.duration)
            threads = [threading.Thread(target=worker, args=(load, port, context)) for _ in range(args.connections)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=args.duration + 30)
            elapsed = time.monotonic() - load.start
        finally:
            stop.set()
            server.join(timeout=10)

    completed = len(load.latencies)
    result = {
        "command": " ".join(["python3", "benchmarks/adapter_bench.py", *sys.argv[1:]]),
        "machine": machine(),
        "load_average_1min_at_start": load_average,
        "rate_requested": args.rate,
        "requests_ok": completed,
        "errors": load.errors,
        "rate_achieved": round((completed + sum(load.errors.values())) / elapsed, 1),
        "latency_ms": {name: round(percentile(load.latencies, fraction) * 1000, 2) for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
        "latency_max_ms": round(max(load.latencies, default=float("nan")) * 1000, 2),
        "service_time_p99_ms": round(percentile(load.service_times, 0.99) * 1000, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0 if not load.errors else 1


if __name__ == "__main__":
    sys.exit(main())
