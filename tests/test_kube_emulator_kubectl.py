"""Fidelity of the Kubernetes API emulator with the real kubectl binary (discovery, tables, /scale, watch)."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.kube_emulator import KubeEmulator

pytestmark = pytest.mark.kubectl

NS = "default"
KUBECTL_TIMEOUT_SECONDS = 60


@pytest.fixture
def kubectl(kube_emulator: KubeEmulator, shared_dir: Path, tmp_path: Path):
    """Return run(*args) -> CompletedProcess for kubectl against the emulator, with the frontend sample applied."""
    binary = require_binary("kubectl")
    kube_emulator.apply_manifest(shared_dir / "grove" / "multinode-disaggregated-with-frontend.yaml")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [binary, "--kubeconfig", str(kube_emulator.kubeconfig), "--cache-dir", str(tmp_path / "cache"),
                   *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=KUBECTL_TIMEOUT_SECONDS)
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed with exit code {result.returncode}: {result.stderr}")
        return result

    run.command_prefix = [binary, "--kubeconfig", str(kube_emulator.kubeconfig), "--cache-dir",
                          str(tmp_path / "cache")]
    return run


def table_rows(output: str) -> tuple[list[str], list[list[str]]]:
    lines = [line.split() for line in output.strip().splitlines()]
    return lines[0], lines[1:]


def test_kubectl_get_pclq_lists_names(kubectl) -> None:
    header, rows = table_rows(kubectl("get", "pclq").stdout)
    assert header == ["NAME", "MINAVAIL", "REPLICAS", "READY", "SCHEDULED", "UPDATED", "AGE"]
    assert [row[0] for row in rows] == [
        "mn-disagg-0-decode-0-dleader", "mn-disagg-0-decode-0-dworker", "mn-disagg-0-frontend",
        "mn-disagg-0-prefill-0-pleader", "mn-disagg-0-prefill-0-pworker", "mn-disagg-0-prefill-1-pleader",
        "mn-disagg-0-prefill-1-pworker",
    ]
    frontend = next(row for row in rows if row[0] == "mn-disagg-0-frontend")
    assert frontend[1:6] == ["2", "2", "2", "2", "2"]


def test_kubectl_get_one_pclq_table(kubectl) -> None:
    header, rows = table_rows(kubectl("get", "pclq", "mn-disagg-0-prefill-0-pworker").stdout)
    assert header == ["NAME", "MINAVAIL", "REPLICAS", "READY", "SCHEDULED", "UPDATED", "AGE"]
    assert rows[0][:3] == ["mn-disagg-0-prefill-0-pworker", "3", "3"]


def test_kubectl_get_with_label_selector(kubectl) -> None:
    output = kubectl("get", "pclq", "-l", "grove.io/podcliquescalinggroup=mn-disagg-0-decode", "-o", "name").stdout
    assert output.split() == ["podclique.grove.io/mn-disagg-0-decode-0-dleader",
                              "podclique.grove.io/mn-disagg-0-decode-0-dworker"]


def test_kubectl_get_pcsg_wide_columns(kubectl) -> None:
    header, rows = table_rows(kubectl("get", "pcsg", "-o", "wide").stdout)
    # The update-progress columns are empty (Grove status.updateProgress is not emulated), so read from the right.
    assert header[-2:] == ["MINBREACHED", "AGE"]
    assert [row[-2] for row in rows] == ["False", "False"]


def test_kubectl_scale_pclq_writes_spec_replicas(kubectl, kube_emulator: KubeEmulator) -> None:
    kube_emulator.clear_requests()
    result = kubectl("scale", "pclq", "mn-disagg-0-frontend", "--replicas", "3")
    assert result.stdout.strip() == "podclique.grove.io/mn-disagg-0-frontend scaled"
    assert kube_emulator.get("pclq", NS, "mn-disagg-0-frontend")["spec"]["replicas"] == 3

    [patch] = kube_emulator.requests_matching("PATCH", r"/scale$")
    assert patch.path == "/apis/grove.io/v1alpha1/namespaces/default/podcliques/mn-disagg-0-frontend/scale"
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body == {"spec": {"replicas": 3}}
    assert patch.user_agent.startswith("kubectl/")


def test_kubectl_scale_pcs_creates_new_index(kubectl, kube_emulator: KubeEmulator) -> None:
    kubectl("scale", "pcs", "mn-disagg", "--replicas=2")
    assert kube_emulator.names("pcsg", NS) == ["mn-disagg-0-decode", "mn-disagg-0-prefill", "mn-disagg-1-decode",
                                               "mn-disagg-1-prefill"]
    assert kube_emulator.get("pclq", NS, "mn-disagg-1-frontend")["spec"]["replicas"] == 2


def test_kubectl_scale_stale_version_fails(kubectl, kube_emulator: KubeEmulator) -> None:
    stale = kube_emulator.get("pclq", NS, "mn-disagg-0-frontend")["metadata"]["resourceVersion"]
    kubectl("scale", "pclq", "mn-disagg-0-frontend", "--replicas", "4")
    result = kubectl("scale", "pclq", "mn-disagg-0-frontend", "--replicas", "5", f"--resource-version={stale}",
                     check=False)
    # kubectl compares --resource-version itself after a GET, before it sends the PATCH.
    assert result.returncode != 0
    assert f"Expected resource version to be {stale}" in result.stderr
    assert kube_emulator.get("pclq", NS, "mn-disagg-0-frontend")["spec"]["replicas"] == 4


def test_kubectl_get_raw_scale(kubectl, kube_emulator: KubeEmulator) -> None:
    path = "/apis/grove.io/v1alpha1/namespaces/default/podcliques/mn-disagg-0-frontend/scale"
    scale = json.loads(kubectl("get", "--raw", path).stdout)
    clique = kube_emulator.get("pclq", NS, "mn-disagg-0-frontend")
    assert scale["kind"] == "Scale"
    assert scale["apiVersion"] == "autoscaling/v1"
    assert scale["metadata"]["resourceVersion"] == clique["metadata"]["resourceVersion"]
    assert scale["spec"] == {"replicas": 2}
    assert scale["status"]["replicas"] == 2
    assert scale["status"]["selector"].endswith("grove.io/podclique=mn-disagg-0-frontend")


def test_kubectl_get_pcs_json(kubectl) -> None:
    listed = json.loads(kubectl("get", "pcs", "-o", "json").stdout)
    [pcs] = listed["items"]
    assert pcs["kind"] == "PodCliqueSet"
    assert pcs["metadata"]["name"] == "mn-disagg"
    assert pcs["spec"]["replicas"] == 1
    assert [group["name"] for group in pcs["spec"]["template"]["podCliqueScalingGroups"]] == ["prefill", "decode"]
    assert pcs["status"]["availableReplicas"] == 1


def test_kubectl_get_missing_not_found(kubectl) -> None:
    result = kubectl("get", "pclq", "nope", check=False)
    assert result.returncode == 1
    assert 'podcliques.grove.io "nope" not found' in result.stderr


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


def test_kubectl_watch_shows_scale_change(kubectl, kube_emulator: KubeEmulator) -> None:
    command = [*kubectl.command_prefix, "get", "pclq", "mn-disagg-0-frontend", "-w",
               "-o", "jsonpath={.spec.replicas}{\"\\n\"}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    try:
        first = lines.get(timeout=KUBECTL_TIMEOUT_SECONDS).strip()
        kubectl("scale", "pclq", "mn-disagg-0-frontend", "--replicas", "4")
        second = lines.get(timeout=KUBECTL_TIMEOUT_SECONDS).strip()
    finally:
        process.kill()
        process.wait(timeout=KUBECTL_TIMEOUT_SECONDS)
    assert first == "2"
    assert second == "4"


def test_kubectl_watch_table_output(kubectl, kube_emulator: KubeEmulator) -> None:
    command = [*kubectl.command_prefix, "get", "pclq", "-w", "-l", "app.kubernetes.io/component=pcs-podclique"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    try:
        header = lines.get(timeout=KUBECTL_TIMEOUT_SECONDS).split()
        initial = lines.get(timeout=KUBECTL_TIMEOUT_SECONDS).split()
        kubectl("scale", "pclq", "mn-disagg-0-frontend", "--replicas", "5")
        changed = lines.get(timeout=KUBECTL_TIMEOUT_SECONDS).split()
    finally:
        process.kill()
        process.wait(timeout=KUBECTL_TIMEOUT_SECONDS)
    assert header[:3] == ["NAME", "MINAVAIL", "REPLICAS"]
    assert initial[:3] == ["mn-disagg-0-frontend", "2", "2"]
    assert changed[:3] == ["mn-disagg-0-frontend", "2", "5"]


def write_small_pcs(path: Path, extra_clique_field: str = "") -> Path:
    path.write_text(
        "apiVersion: grove.io/v1alpha1\n"
        "kind: PodCliqueSet\n"
        "metadata: {name: small}\n"
        "spec:\n"
        "  replicas: 1\n"
        "  template:\n"
        "    cliques:\n"
        "    - name: worker\n"
        "      spec: {roleName: worker, replicas: 2, " + extra_clique_field +
        "podSpec: {containers: [{name: w, image: busybox}]}}\n"
    )
    return path


def test_kubectl_create_validates_on_server(kubectl, kube_emulator: KubeEmulator, tmp_path: Path) -> None:
    result = kubectl("create", "-f", str(write_small_pcs(tmp_path / "good.yaml")))
    assert result.stdout.strip() == "podcliqueset.grove.io/small created"
    assert kube_emulator.get("pclq", NS, "small-0-worker")["spec"]["replicas"] == 2
    [create] = kube_emulator.requests_matching("POST", "/podcliquesets$")
    assert create.query["fieldValidation"] == "Strict"


def test_kubectl_create_rejects_unknown_field(kubectl, kube_emulator: KubeEmulator, tmp_path: Path) -> None:
    result = kubectl("create", "-f", str(write_small_pcs(tmp_path / "bad.yaml", "bogus: 1, ")), check=False)
    assert result.returncode == 1
    assert 'unknown field "spec.template.cliques[0].spec.bogus"' in result.stderr
    assert kube_emulator.names("pcs", NS) == ["mn-disagg"]


def test_kubectl_apply_twice_patches(kubectl, kube_emulator: KubeEmulator, tmp_path: Path) -> None:
    manifest = str(write_small_pcs(tmp_path / "pcs.yaml"))
    assert kubectl("apply", "-f", manifest).stdout.strip() == "podcliqueset.grove.io/small created"
    kubectl("apply", "-f", manifest)
    [patch] = kube_emulator.requests_matching("PATCH", "/podcliquesets/small$")
    assert patch.content_type == "application/merge-patch+json"


def test_kubectl_delete_pcs_cascades(kubectl, kube_emulator: KubeEmulator) -> None:
    kubectl("delete", "pcs", "mn-disagg")
    assert kube_emulator.names("pclq", NS) == []
    assert kube_emulator.names("pcsg", NS) == []
