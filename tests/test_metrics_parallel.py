"""A tick's Prometheus queries overlap, so a slow server costs one timeout per tick, not one per signal."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from metrics.catalog import SignalCatalog
from metrics.prometheus import PrometheusSource
from metrics.sample import SignalRequest


class SlowPrometheus(ThreadingHTTPServer):
    """A server that returns an empty vector for every query after a pause, counting queries in flight."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SlowHandler)
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0


class SlowHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        server: SlowPrometheus = self.server  # type: ignore[assignment]
        with server.lock:
            server.active += 1
            server.max_active = max(server.max_active, server.active)
        threading.Event().wait(0.3)
        with server.lock:
            server.active -= 1
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def slow_server():
    server = SlowPrometheus()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_queries_of_one_tick_overlap(slow_server):
    url = f"http://127.0.0.1:{slow_server.server_address[1]}"
    source = PrometheusSource(url=url, catalog=SignalCatalog(preset="vllm"), timeout_seconds=5)
    labels = {"namespace": "llm", "grove_io_podclique": "pcs-0-decode"}
    signals = ["ttft_p90", "itl_p90", "kv_cache_usage"]
    try:
        result = source.fetch([SignalRequest("llm/podclique/pcs-0-decode", signal, labels) for signal in signals], now=1000.0)
    finally:
        source.close()

    assert source.queries_made == 3
    assert slow_server.max_active == 3
    assert sorted(result["llm/podclique/pcs-0-decode"]) == sorted(signals)
    assert all(sample.is_unknown for sample in result["llm/podclique/pcs-0-decode"].values())
