"""The long-running commands as processes: `adapter` serves decisions, `run` serves /metrics and stops on SIGTERM."""

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

from tests.fixtures.prometheus import free_port
from tests.test_e2e_controller import PREFILL, recent_backfill, write_config


def wait_for(url: str, context=None, timeout: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as response:
                return response.read()
        except (urllib.error.URLError, ConnectionError) as error:
            last_error = error
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s: {last_error}")


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def test_adapter_command_serves_the_decision(kube_emulator, shared_dir, prometheus_server, tmp_path):
    kube_emulator.apply_manifest(shared_dir / "grove" / "multi-node-disaggregated.yaml")
    server = prometheus_server(recent_backfill(prefill_ttft=1.0, decode_itl=0.02, decode_kv=0.6))
    config = write_config(tmp_path, server.url)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "autoscaler.cli", "adapter", "--config", config, "--kubeconfig", str(kube_emulator.kubeconfig),
         "--adapter-host", "127.0.0.1", "--adapter-port", str(port), "--adapter-insecure-no-auth"],
        stderr=subprocess.PIPE,
    )
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    url = (f"https://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/"
           f"grove_autoscaler_desired_replicas?labelSelector=grove_io_target_name%3D{PREFILL}")
    try:
        body = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, context=insecure, timeout=2) as response:
                    body = json.loads(response.read())
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        assert body is not None, "adapter did not serve the metric within 30 s"
        assert [item["value"] for item in body["items"]] == ["4"]
        # The adapter decides but never writes.
        assert kube_emulator.get("podcliquescalinggroups", "default", PREFILL)["spec"]["replicas"] == 2
    finally:
        assert stop(process) == 0


def test_run_serves_ops_endpoints_and_stops_on_sigterm(kube_emulator, shared_dir, prometheus_server, tmp_path):
    kube_emulator.apply_manifest(shared_dir / "grove" / "multi-node-disaggregated.yaml")
    server = prometheus_server(recent_backfill(prefill_ttft=1.0, decode_itl=0.02, decode_kv=0.6))
    config = write_config(tmp_path, server.url)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "autoscaler.cli", "run", "--config", config, "--kubeconfig", str(kube_emulator.kubeconfig),
         "--dry-run", "--metrics-host", "127.0.0.1", "--metrics-port", str(port), "--log-format", "json"],
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_for(f"http://127.0.0.1:{port}/healthz")
        wait_for(f"http://127.0.0.1:{port}/readyz")
        metrics = wait_for(f"http://127.0.0.1:{port}/metrics").decode()
        assert "grove_autoscaler_ticks_total" in metrics
        assert f'target="default/podcliquescalinggroup/{PREFILL}"' in metrics
    finally:
        assert stop(process) == 0
    logs = [json.loads(line) for line in process.stderr.read().decode().splitlines() if line.startswith("{")]
    messages = [entry.get("message", "") for entry in logs]
    assert any("would scale podcliquescalinggroup" in message and "2 -> 4" in message for message in messages), messages
    assert any(message == "controller stopped" for message in messages)
