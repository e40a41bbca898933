"""Two `grove-autoscaler run --leader-elect` processes against the emulated API.

Only the leader writes. The test keeps pushing the target below its minimum, so the leader
writes every tick. The writer of each write is read from the Event it records, whose
reportingInstance is the POD_NAME given to each process.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.fixtures.prometheus import free_port

NAMESPACE = "default"
TARGET = "single-node-disaggregated-0-decode"
LEASE_SECONDS = 3.0


def start(name: str, config, kubeconfig) -> subprocess.Popen:
    env = {**os.environ, "POD_NAME": name, "POD_NAMESPACE": NAMESPACE}
    command = [
        sys.executable, "-m", "autoscaler.cli", "run", "--config", str(config), "--kubeconfig", str(kubeconfig),
        "--leader-elect", "--lease-duration-seconds", str(LEASE_SECONDS), "--renew-deadline-seconds", "2",
        "--retry-period-seconds", "0.5", "--reload-seconds", "0",
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def writers(emulator) -> list[str]:
    """Return the reportingInstance of every scale Event, in the order the server received them."""
    posts = emulator.requests_matching("POST", r"/namespaces/default/events$")
    return [record.body.get("reportingInstance") for record in posts if isinstance(record.body, dict) and record.body.get("reason") == "ScaledUp"]


def push_below_minimum(emulator) -> None:
    scale_type = emulator.resource_type("podcliques")
    emulator.api.patch_scale(scale_type, NAMESPACE, TARGET, {"spec": {"replicas": 2}}, "application/merge-patch+json")


def runs_of(sequence: list[str]) -> list[str]:
    runs: list[str] = []
    for item in sequence:
        if not runs or runs[-1] != item:
            runs.append(item)
    return runs


def test_one_writer_and_failover(kube_emulator, shared_dir, tmp_path):
    kube_emulator.apply_manifest(shared_dir / "grove" / "single-node-disaggregated.yaml")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "intervalSeconds": 1,
        # Nothing listens there: every query fails, so only the bounds move the target.
        "metrics": {"prometheus": {"url": f"http://127.0.0.1:{free_port()}", "timeoutSeconds": 1}},
        "targets": [{
            "name": "decode", "podCliqueSets": {"namespace": NAMESPACE}, "level": "clique", "clique": {"name": "decode"},
            "minReplicas": 3, "maxReplicas": 6, "policies": [{"name": "kv-cache"}],
        }],
    }))
    first = start("controller-a", config, kube_emulator.kubeconfig)
    second = start("controller-b", config, kube_emulator.kubeconfig)
    processes = {"controller-a": first, "controller-b": second}
    try:
        deadline = time.monotonic() + 30
        while len(writers(kube_emulator)) < 3 and time.monotonic() < deadline:
            push_below_minimum(kube_emulator)
            time.sleep(0.4)
        before = writers(kube_emulator)
        assert len(before) >= 3, "no leader wrote within 30 s"
        assert len(set(before)) == 1, f"two writers before failover: {before}"
        leader = before[0]
        follower = next(name for name in processes if name != leader)

        # Kill the leader without releasing its Lease: the follower must take over after expiry.
        processes[leader].send_signal(signal.SIGKILL)
        processes[leader].wait(timeout=10)
        killed_at = time.monotonic()
        while follower not in writers(kube_emulator) and time.monotonic() < killed_at + 20:
            push_below_minimum(kube_emulator)
            time.sleep(0.2)
        takeover_seconds = time.monotonic() - killed_at

        sequence = writers(kube_emulator)
        assert follower in sequence, f"{follower} never wrote after the leader was killed"
        # Lease expiry plus one retry period and one tick, with slack for a loaded machine.
        assert takeover_seconds < LEASE_SECONDS + 6
        # No interleaving: every write of the old leader comes before every write of the new one.
        assert runs_of(sequence) == [leader, follower]
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
