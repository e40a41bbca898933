"""Opt-in checks against a real cluster, skipped unless KUBECONFIG names a kubeconfig file.

They only read: discovery, `/scale` reads and a dry-run tick, never a write. The cluster must
have the Grove CRDs installed. GROVE_AUTOSCALER_E2E_NAMESPACE picks the namespace to look at
(default: default).
"""

import os
from pathlib import Path

import pytest

from autoscaler.config import parse_config
from autoscaler.controller import Controller
from autoscaler.kube import KubeClient
from autoscaler.runtime import make_api_client
from autoscaler.targets import GROUP, VERSION, Kind
from metrics.source import StaticSource

pytestmark = pytest.mark.e2e

KUBECONFIG = os.environ.get("KUBECONFIG", "")
NAMESPACE = os.environ.get("GROVE_AUTOSCALER_E2E_NAMESPACE", "default")

if not KUBECONFIG or not Path(KUBECONFIG.split(os.pathsep)[0]).is_file():
    pytest.skip("set KUBECONFIG to a real cluster's kubeconfig to run these", allow_module_level=True)


@pytest.fixture(scope="module")
def kube() -> KubeClient:
    return KubeClient(make_api_client(KUBECONFIG.split(os.pathsep)[0]))


def test_grove_crds_served(kube):
    resources = kube.custom.get_api_resources(GROUP, VERSION)
    names = {resource.name for resource in resources.resources}
    for kind in Kind:
        assert kind.plural in names
        assert f"{kind.plural}/scale" in names


def test_scale_readable_for_every_podclique(kube):
    for obj in kube.list_objects(Kind.PODCLIQUE, NAMESPACE)[:20]:
        scale = kube.custom.get_namespaced_custom_object_scale(GROUP, VERSION, NAMESPACE, Kind.PODCLIQUE.plural, obj["metadata"]["name"])
        assert scale["spec"]["replicas"] == obj["spec"]["replicas"]


def test_dry_run_tick_writes_nothing(kube):
    sets = kube.list_objects(Kind.PODCLIQUESET, NAMESPACE)
    if not sets:
        pytest.skip(f"no PodCliqueSet in namespace {NAMESPACE}")
    config = parse_config(
        {
            "targets": [
                {
                    "name": "whole",
                    "podCliqueSets": {"namespace": NAMESPACE},
                    "level": "podcliqueset",
                    "maxReplicas": 100,
                    "policies": [{"name": "target", "params": {"signal": "request_rate", "type": "AverageValue", "value": 1}}],
                }
            ]
        }
    )
    before = {obj["metadata"]["name"]: obj["spec"]["replicas"] for obj in sets}
    result = Controller(config, kube, StaticSource({}), dry_run=True).tick()
    after = {obj["metadata"]["name"]: obj["spec"]["replicas"] for obj in kube.list_objects(Kind.PODCLIQUESET, NAMESPACE)}
    assert result.writes == []
    assert {decision.target.rsplit("/", 1)[-1] for decision in result.decisions} <= set(before)
    assert after == before
