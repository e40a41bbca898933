"""The Kubernetes API emulator through the official `kubernetes` client: REST semantics, reviews, faults, Grove."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import pytest
import urllib3
import yaml
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.kube_emulator import ApiError, KubeEmulator
from tests.kube_emulator.patches import json_patch, merge_patch
from tests.kube_emulator.resources import BUILTIN_TYPES
from tests.kube_emulator.selectors import Selector
from tests.kube_emulator.store import Store

GROUP = "grove.io"
VERSION = "v1alpha1"
NS = "default"


def status_of(error: ApiException) -> dict:
    return json.loads(error.body)


def custom(emulator: KubeEmulator) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(emulator.api_client())


@pytest.fixture
def multinode(kube_emulator: KubeEmulator, shared_dir: Path) -> KubeEmulator:
    kube_emulator.apply_manifest(shared_dir / "grove" / "multi-node-disaggregated.yaml")
    return kube_emulator


@pytest.fixture
def with_frontend(kube_emulator: KubeEmulator, shared_dir: Path) -> KubeEmulator:
    kube_emulator.apply_manifest(shared_dir / "grove" / "multinode-disaggregated-with-frontend.yaml")
    return kube_emulator


def standalone_clique(name: str, replicas: int = 2) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PodClique",
        "metadata": {"name": name, "labels": {"tier": "test"}},
        "spec": {"roleName": "worker", "replicas": replicas,
                 "podSpec": {"containers": [{"name": "main", "image": "busybox"}]}},
    }


# --- discovery -------------------------------------------------------------------------------------------------


def test_discovery_lists_grove_group(kube_emulator: KubeEmulator) -> None:
    groups = client.ApisApi(kube_emulator.api_client()).get_api_versions()
    names = {group.name for group in groups.groups}
    assert {"grove.io", "coordination.k8s.io", "autoscaling", "events.k8s.io"} <= names


def test_discovery_grove_subresources(kube_emulator: KubeEmulator) -> None:
    resources = custom(kube_emulator).get_api_resources(GROUP, VERSION)
    by_name = {resource.name: resource for resource in resources.resources}
    assert set(by_name) == {
        "podcliquesets", "podcliquesets/status", "podcliquesets/scale",
        "podcliquescalinggroups", "podcliquescalinggroups/status", "podcliquescalinggroups/scale",
        "podcliques", "podcliques/status", "podcliques/scale",
    }
    assert by_name["podcliques"].short_names == ["pclq"]
    assert by_name["podcliquesets"].short_names == ["pcs"]
    assert by_name["podcliquescalinggroups"].short_names == ["pcsg"]
    assert by_name["podcliques"].namespaced is True
    assert by_name["podcliques/scale"].group == "autoscaling"
    assert by_name["podcliques/scale"].version == "v1"
    assert by_name["podcliques/scale"].kind == "Scale"


def test_openapi_v2_is_404(kube_emulator: KubeEmulator) -> None:
    response = urllib3.request("GET", kube_emulator.url + "/openapi/v2")
    assert response.status == 404
    assert response.json()["reason"] == "NotFound"


def test_openapi_v3_lists_field_validation(kube_emulator: KubeEmulator) -> None:
    root = urllib3.request("GET", kube_emulator.url + "/openapi/v3").json()
    assert root["paths"]["apis/grove.io/v1alpha1"]["serverRelativeURL"] == "/openapi/v3/apis/grove.io/v1alpha1"
    document = urllib3.request("GET", kube_emulator.url + "/openapi/v3/apis/grove.io/v1alpha1").json()
    patch = document["paths"]["/apis/grove.io/v1alpha1/namespaces/{namespace}/podcliques/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "grove.io", "version": "v1alpha1",
                                                        "kind": "PodClique"}
    assert [parameter["name"] for parameter in patch["parameters"]] == ["fieldValidation"]


# --- CRUD ------------------------------------------------------------------------------------------------------


def test_create_sets_server_metadata(kube_emulator: KubeEmulator) -> None:
    api = custom(kube_emulator)
    first = api.create_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", standalone_clique("a"))
    second = api.create_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", standalone_clique("b"))
    assert first["metadata"]["uid"] != second["metadata"]["uid"]
    assert first["metadata"]["generation"] == 1
    assert first["metadata"]["creationTimestamp"].endswith("Z")
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert first["kind"] == "PodClique"
    assert first["apiVersion"] == "grove.io/v1alpha1"


def test_create_existing_name_is_already_exists(kube_emulator: KubeEmulator) -> None:
    api = custom(kube_emulator)
    api.create_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", standalone_clique("a"))
    with pytest.raises(ApiException) as error:
        api.create_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", standalone_clique("a"))
    assert error.value.status == 409
    body = status_of(error.value)
    assert body["kind"] == "Status"
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'podcliques.grove.io "a" already exists'


def test_get_missing_is_not_found_status(kube_emulator: KubeEmulator) -> None:
    with pytest.raises(ApiException) as error:
        custom(kube_emulator).get_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", "missing")
    assert error.value.status == 404
    body = status_of(error.value)
    assert body["reason"] == "NotFound"
    assert body["details"] == {"name": "missing", "group": "grove.io", "kind": "podcliques"}


def test_create_in_missing_namespace_is_not_found(kube_emulator: KubeEmulator) -> None:
    with pytest.raises(ApiException) as error:
        custom(kube_emulator).create_namespaced_custom_object(GROUP, VERSION, "nowhere", "podcliques",
                                                              standalone_clique("a"))
    assert error.value.status == 404
    assert status_of(error.value)["message"] == 'namespaces "nowhere" not found'


def test_replace_stale_version_conflicts(kube_emulator: KubeEmulator) -> None:
    api = custom(kube_emulator)
    created = api.create_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", standalone_clique("a"))
    updated = copy.deepcopy(created)
    updated["spec"]["replicas"] = 4
    replaced = api.replace_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", "a", updated)
    assert replaced["spec"]["replicas"] == 4
    assert replaced["metadata"]["generation"] == 2

    stale = copy.deepcopy(created)
    stale["spec"]["replicas"] = 7
    with pytest.raises(ApiException) as error:
        api.replace_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", "a", stale)
    assert error.value.status == 409
    assert status_of(error.value)["reason"] == "Conflict"
    assert kube_emulator.get("pclq", NS, "a")["spec"]["replicas"] == 4


def test_replace_without_version_invalid(kube_emulator: KubeEmulator) -> None:
    api = custom(kube_emulator)
    api.create_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", standalone_clique("a"))
    with pytest.raises(ApiException) as error:
        api.replace_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", "a", standalone_clique("a", 3))
    assert error.value.status == 422


def test_merge_patch_changes_spec_not_status(kube_emulator: KubeEmulator) -> None:
    api = custom(kube_emulator)
    created = api.create_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", standalone_clique("a"))
    patched = api.patch_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", "a",
                                                 {"spec": {"replicas": 5}, "status": {"readyReplicas": 9}})
    assert patched["spec"]["replicas"] == 5
    assert "status" not in patched
    assert int(patched["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    request = kube_emulator.requests_matching("PATCH", r"/podcliques/a$")[-1]
    assert request.content_type == "application/merge-patch+json"


def test_status_subresource_writes_status_only(kube_emulator: KubeEmulator) -> None:
    api = custom(kube_emulator)
    api.create_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", standalone_clique("a"))
    patched = api.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, "podcliques", "a", {"spec": {"replicas": 9}, "status": {"readyReplicas": 1}})
    assert patched["status"]["readyReplicas"] == 1
    assert patched["status"]["updatedReplicas"] == 0
    assert patched["spec"]["replicas"] == 2
    assert patched["metadata"]["generation"] == 1


def test_strategic_merge_on_custom_resource_is_415(kube_emulator: KubeEmulator) -> None:
    api = custom(kube_emulator)
    api.create_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", standalone_clique("a"))
    with pytest.raises(ApiException) as error:
        api.patch_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", "a", {"spec": {"replicas": 3}},
                                           _content_type="application/strategic-merge-patch+json")
    assert error.value.status == 415
    assert status_of(error.value)["reason"] == "UnsupportedMediaType"


def test_json_patch_applies_operations(kube_emulator: KubeEmulator) -> None:
    api = custom(kube_emulator)
    api.create_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", standalone_clique("a"))
    patched = api.patch_namespaced_custom_object(
        GROUP, VERSION, NS, "podcliques", "a",
        [{"op": "test", "path": "/spec/replicas", "value": 2}, {"op": "replace", "path": "/spec/replicas", "value": 6}],
        _content_type="application/json-patch+json")
    assert patched["spec"]["replicas"] == 6

    with pytest.raises(ApiException) as error:
        api.patch_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", "a",
                                           [{"op": "test", "path": "/spec/replicas", "value": 2}],
                                           _content_type="application/json-patch+json")
    assert error.value.status == 422


def test_delete_returns_object_and_removes_it(kube_emulator: KubeEmulator) -> None:
    api = custom(kube_emulator)
    api.create_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", standalone_clique("a"))
    deleted = api.delete_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", "a")
    assert deleted["metadata"]["name"] == "a"
    assert kube_emulator.names("pclq", NS) == []


def test_dry_run_stores_nothing(kube_emulator: KubeEmulator) -> None:
    api = custom(kube_emulator)
    created = api.create_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", standalone_clique("a"),
                                                  dry_run="All")
    assert created["metadata"]["name"] == "a"
    assert kube_emulator.names("pclq", NS) == []


# --- schema ----------------------------------------------------------------------------------------------------


def test_schema_prunes_unknown_fields_with_warning(kube_emulator: KubeEmulator) -> None:
    body = standalone_clique("a")
    body["spec"]["bogus"] = 1
    body["extra"] = {"x": 1}
    response = urllib3.request("POST", f"{kube_emulator.url}/apis/grove.io/v1alpha1/namespaces/default/podcliques",
                               body=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status == 201
    assert "bogus" not in response.json()["spec"]
    assert "extra" not in response.json()
    assert 'unknown field \\"spec.bogus\\"' in response.headers["Warning"]


def test_schema_strict_rejects_unknown_fields(kube_emulator: KubeEmulator) -> None:
    body = standalone_clique("a")
    body["spec"]["bogus"] = 1
    with pytest.raises(ApiException) as error:
        custom(kube_emulator).create_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", body,
                                                              field_validation="Strict")
    assert error.value.status == 400
    assert 'unknown field "spec.bogus"' in status_of(error.value)["message"]


@pytest.mark.parametrize(
    ("case", "mutate", "field"),
    [
        ("wrong type", lambda body: body["spec"].update(replicas="two"), "spec.replicas"),
        ("missing required", lambda body: body["spec"].pop("roleName"), "spec.roleName"),
        ("missing nested required", lambda body: body["spec"]["podSpec"].pop("containers"), "spec.podSpec.containers"),
    ],
)
def test_schema_rejects_invalid_objects(kube_emulator: KubeEmulator, case: str, mutate, field: str) -> None:
    body = standalone_clique("a")
    mutate(body)
    with pytest.raises(ApiException) as error:
        custom(kube_emulator).create_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", body)
    assert error.value.status == 422, case
    causes = status_of(error.value)["details"]["causes"]
    assert [cause["field"] for cause in causes] == [field], case


def test_schema_applies_crd_defaults(kube_emulator: KubeEmulator) -> None:
    group = {"apiVersion": "grove.io/v1alpha1", "kind": "PodCliqueScalingGroup", "metadata": {"name": "g"},
             "spec": {"cliqueNames": ["a"]}}
    created = custom(kube_emulator).create_namespaced_custom_object(GROUP, VERSION, NS, "podcliquescalinggroups",
                                                                    group)
    assert created["spec"]["replicas"] == 1
    assert created["spec"]["minAvailable"] == 1


# --- /scale ----------------------------------------------------------------------------------------------------


def test_get_scale_reads_crd_scale_paths(with_frontend: KubeEmulator) -> None:
    api = custom(with_frontend)
    clique = api.get_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend")
    scale = api.get_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend")
    assert scale["kind"] == "Scale"
    assert scale["apiVersion"] == "autoscaling/v1"
    assert scale["metadata"]["name"] == "mn-disagg-0-frontend"
    assert scale["metadata"]["namespace"] == NS
    assert scale["metadata"]["uid"] == clique["metadata"]["uid"]
    assert scale["metadata"]["resourceVersion"] == clique["metadata"]["resourceVersion"]
    assert scale["spec"] == {"replicas": 2}
    assert scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == (
        "app.kubernetes.io/managed-by=grove-operator,app.kubernetes.io/part-of=mn-disagg,"
        "grove.io/podclique=mn-disagg-0-frontend")


def test_pcsg_scale_selector_from_status(with_frontend: KubeEmulator) -> None:
    scale = custom(with_frontend).get_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliquescalinggroups",
                                                                     "mn-disagg-0-prefill")
    assert scale["spec"]["replicas"] == 2
    assert scale["status"]["selector"] == (
        "app.kubernetes.io/managed-by=grove-operator,app.kubernetes.io/part-of=mn-disagg,"
        "grove.io/podcliquescalinggroup=mn-disagg-0-prefill")


def test_scale_of_member_clique_has_no_selector(with_frontend: KubeEmulator) -> None:
    scale = custom(with_frontend).get_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques",
                                                                     "mn-disagg-0-prefill-0-pworker")
    assert "selector" not in scale["status"]


def test_patch_scale_writes_spec_replicas(with_frontend: KubeEmulator) -> None:
    api = custom(with_frontend)
    before = with_frontend.get("pclq", NS, "mn-disagg-0-frontend")
    scale = api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend",
                                                     {"spec": {"replicas": 4}})
    after = with_frontend.get("pclq", NS, "mn-disagg-0-frontend")
    assert scale["spec"]["replicas"] == 4
    assert after["spec"]["replicas"] == 4
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert after["status"]["replicas"] == 4
    request = with_frontend.requests_matching("PATCH", r"/scale$")[-1]
    assert request.content_type == "application/merge-patch+json"
    assert request.body == {"spec": {"replicas": 4}}


def test_noop_scale_keeps_resource_version(with_frontend: KubeEmulator) -> None:
    before = with_frontend.get("pclq", NS, "mn-disagg-0-frontend")
    custom(with_frontend).patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques",
                                                               "mn-disagg-0-frontend", {"spec": {"replicas": 2}})
    after = with_frontend.get("pclq", NS, "mn-disagg-0-frontend")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_scale_stale_version_conflicts(with_frontend: KubeEmulator) -> None:
    api = custom(with_frontend)
    scale = api.get_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend")
    api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend",
                                             {"spec": {"replicas": 3}})

    stale_patch = {"metadata": {"resourceVersion": scale["metadata"]["resourceVersion"]}, "spec": {"replicas": 5}}
    with pytest.raises(ApiException) as patch_error:
        api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend",
                                                 stale_patch)
    assert patch_error.value.status == 409
    assert status_of(patch_error.value)["reason"] == "Conflict"

    scale["spec"]["replicas"] = 5
    with pytest.raises(ApiException) as put_error:
        api.replace_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend", scale)
    assert put_error.value.status == 409
    assert with_frontend.get("pclq", NS, "mn-disagg-0-frontend")["spec"]["replicas"] == 3


def test_replace_scale_with_current_version_succeeds(with_frontend: KubeEmulator) -> None:
    api = custom(with_frontend)
    scale = api.get_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend")
    scale["spec"]["replicas"] = 6
    replaced = api.replace_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend",
                                                          scale)
    assert replaced["spec"]["replicas"] == 6
    assert with_frontend.get("pclq", NS, "mn-disagg-0-frontend")["spec"]["replicas"] == 6


def test_negative_scale_is_invalid(with_frontend: KubeEmulator) -> None:
    with pytest.raises(ApiException) as error:
        custom(with_frontend).patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques",
                                                                   "mn-disagg-0-frontend", {"spec": {"replicas": -1}})
    assert error.value.status == 422


# --- selectors and lists ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("grove.io/podcliquescalinggroup=mn-disagg-0-decode",
         ["mn-disagg-0-decode-0-dleader", "mn-disagg-0-decode-0-dworker"]),
        ("grove.io/podcliquescalinggroup==mn-disagg-0-decode",
         ["mn-disagg-0-decode-0-dleader", "mn-disagg-0-decode-0-dworker"]),
        ("!grove.io/podcliquescalinggroup", ["mn-disagg-0-frontend"]),
        ("app.kubernetes.io/component in (pcs-podclique)", ["mn-disagg-0-frontend"]),
        ("app.kubernetes.io/component notin (pcsg-podclique)", ["mn-disagg-0-frontend"]),
        ("grove.io/podcliquescalinggroup-replica-index!=0", ["mn-disagg-0-frontend", "mn-disagg-0-prefill-1-pleader",
                                                             "mn-disagg-0-prefill-1-pworker"]),
        ("grove.io/podcliquescalinggroup-replica-index,grove.io/podcliquescalinggroup in (mn-disagg-0-prefill)",
         ["mn-disagg-0-prefill-0-pleader", "mn-disagg-0-prefill-0-pworker", "mn-disagg-0-prefill-1-pleader",
          "mn-disagg-0-prefill-1-pworker"]),
        ("app.kubernetes.io/part-of=other", []),
    ],
)
def test_label_selector_filters_list(with_frontend: KubeEmulator, selector: str, expected: list[str]) -> None:
    listed = custom(with_frontend).list_namespaced_custom_object(GROUP, VERSION, NS, "podcliques",
                                                                 label_selector=selector)
    assert [item["metadata"]["name"] for item in listed["items"]] == expected


def test_invalid_label_selector_is_bad_request(with_frontend: KubeEmulator) -> None:
    with pytest.raises(ApiException) as error:
        custom(with_frontend).list_namespaced_custom_object(GROUP, VERSION, NS, "podcliques",
                                                            label_selector="a in (b")
    assert error.value.status == 400


def test_field_selector_and_cluster_list(with_frontend: KubeEmulator) -> None:
    with_frontend.create("pclq", standalone_clique("elsewhere"), namespace="other")
    api = custom(with_frontend)
    by_name = api.list_namespaced_custom_object(GROUP, VERSION, NS, "podcliques",
                                                field_selector="metadata.name=mn-disagg-0-frontend")
    assert [item["metadata"]["name"] for item in by_name["items"]] == ["mn-disagg-0-frontend"]

    everywhere = api.list_cluster_custom_object(GROUP, VERSION, "podcliques")
    assert len(everywhere["items"]) == 8
    assert everywhere["kind"] == "PodCliqueList"
    other = api.list_cluster_custom_object(GROUP, VERSION, "podcliques", field_selector="metadata.namespace=other")
    assert [item["metadata"]["name"] for item in other["items"]] == ["elsewhere"]


def test_unsupported_field_selector_is_bad_request(with_frontend: KubeEmulator) -> None:
    with pytest.raises(ApiException) as error:
        custom(with_frontend).list_namespaced_custom_object(GROUP, VERSION, NS, "podcliques",
                                                            field_selector="spec.replicas=2")
    assert error.value.status == 400


# --- watch -----------------------------------------------------------------------------------------------------


def test_watch_replays_from_version(with_frontend: KubeEmulator) -> None:
    api = custom(with_frontend)
    listed = api.list_namespaced_custom_object(GROUP, VERSION, NS, "podcliques")
    api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend",
                                             {"spec": {"replicas": 3}})
    api.delete_namespaced_custom_object(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-prefill-1-pworker")

    events = list(watch.Watch().stream(api.list_namespaced_custom_object, GROUP, VERSION, NS, "podcliques",
                                       resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=1))
    summary = [(event["type"], event["object"]["metadata"]["name"], event["object"]["spec"]["replicas"])
               for event in events]
    assert ("MODIFIED", "mn-disagg-0-frontend", 3) in summary
    assert ("DELETED", "mn-disagg-0-prefill-1-pworker", 3) in summary
    assert all(event["object"]["kind"] == "PodClique" for event in events)


def test_watch_streams_live_changes(with_frontend: KubeEmulator) -> None:
    api = custom(with_frontend)
    watcher = watch.Watch()
    seen: list[tuple[str, str]] = []
    initial = 0
    for event in watcher.stream(api.list_namespaced_custom_object, GROUP, VERSION, NS, "podcliques",
                                label_selector="app.kubernetes.io/component=pcs-podclique", timeout_seconds=10):
        seen.append((event["type"], event["object"]["metadata"]["name"]))
        if event["type"] == "ADDED":
            initial += 1
            with_frontend.create("pclq", standalone_clique("late"))
            custom(with_frontend).patch_namespaced_custom_object_scale(
                GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend", {"spec": {"replicas": 5}})
        if event["type"] == "MODIFIED" and event["object"]["spec"]["replicas"] == 5:
            watcher.stop()
    assert seen[0] == ("ADDED", "mn-disagg-0-frontend")
    assert ("MODIFIED", "mn-disagg-0-frontend") in seen
    assert ("ADDED", "late") not in seen
    assert initial == 1


def test_store_expires_old_watch_versions() -> None:
    store = Store(history_limit=2)
    namespace_type = next(t for t in BUILTIN_TYPES if t.plural == "namespaces")
    for name in ("a", "b", "c"):
        store.create(namespace_type, {"metadata": {"name": name}})
    with pytest.raises(ApiError) as error:
        store.events_after(1)
    assert error.value.code == 410
    assert [event.object["metadata"]["name"] for event in store.events_after(2)] == ["b", "c"]


# --- core kinds ------------------------------------------------------------------------------------------------


def lease(name: str, holder: str) -> client.V1Lease:
    return client.V1Lease(metadata=client.V1ObjectMeta(name=name),
                          spec=client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=15))


def test_lease_update_conflicts_on_stale_version(kube_emulator: KubeEmulator) -> None:
    api = client.CoordinationV1Api(kube_emulator.api_client())
    created = api.create_namespaced_lease(NS, lease("leader", "a"))
    assert created.metadata.resource_version

    created.spec.holder_identity = "b"
    updated = api.replace_namespaced_lease("leader", NS, created)
    assert updated.spec.holder_identity == "b"

    created.spec.holder_identity = "c"
    with pytest.raises(ApiException) as error:
        api.replace_namespaced_lease("leader", NS, created)
    assert error.value.status == 409
    assert api.read_namespaced_lease("leader", NS).spec.holder_identity == "b"


def test_lease_patch_uses_strategic_merge(kube_emulator: KubeEmulator) -> None:
    api = client.CoordinationV1Api(kube_emulator.api_client())
    api.create_namespaced_lease(NS, lease("leader", "a"))
    patched = api.patch_namespaced_lease("leader", NS, {"spec": {"holderIdentity": "z"}})
    assert patched.spec.holder_identity == "z"
    assert patched.spec.lease_duration_seconds == 15
    request = kube_emulator.requests_matching("PATCH", "/leases/leader$")[-1]
    assert request.content_type == "application/strategic-merge-patch+json"


def test_events_create_in_both_groups(kube_emulator: KubeEmulator) -> None:
    core = client.CoreV1Api(kube_emulator.api_client())
    core.create_namespaced_event(NS, client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="scaled-"),
        involved_object=client.V1ObjectReference(kind="PodClique", name="x", namespace=NS),
        reason="Scaled", message="3 -> 5", type="Normal"))
    events_api = client.EventsV1Api(kube_emulator.api_client())
    events_api.create_namespaced_event(NS, client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="scaled.1"), event_time="2026-01-01T00:00:00.000000Z",
        reason="Scaled", note="3 -> 5", type="Normal", action="Scale", reporting_controller="grove-autoscaler",
        reporting_instance="pod-1", regarding=client.V1ObjectReference(kind="PodClique", name="x", namespace=NS)))

    core_events = core.list_namespaced_event(NS).items
    assert len(core_events) == 1
    assert core_events[0].metadata.name.startswith("scaled-")
    assert core_events[0].reason == "Scaled"
    assert [event.note for event in events_api.list_namespaced_event(NS).items] == ["3 -> 5"]


def test_configmap_and_namespace_crud(kube_emulator: KubeEmulator) -> None:
    core = client.CoreV1Api(kube_emulator.api_client())
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="llm")))
    core.create_namespaced_config_map("llm", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"),
                                                                data={"k": "v"}))
    assert core.read_namespaced_config_map("c", "llm").data == {"k": "v"}
    status = core.delete_namespaced_config_map("c", "llm")
    assert status["status"] == "Success"
    assert core.list_namespaced_config_map("llm").items == []


def test_hpa_create_and_list(kube_emulator: KubeEmulator) -> None:
    api = client.AutoscalingV2Api(kube_emulator.api_client())
    hpa = client.V2HorizontalPodAutoscaler(
        metadata=client.V1ObjectMeta(name="h"),
        spec=client.V2HorizontalPodAutoscalerSpec(
            scale_target_ref=client.V2CrossVersionObjectReference(api_version="grove.io/v1alpha1", kind="PodClique",
                                                                  name="x"),
            min_replicas=1, max_replicas=4))
    api.create_namespaced_horizontal_pod_autoscaler(NS, hpa)
    listed = api.list_namespaced_horizontal_pod_autoscaler(NS).items
    assert [(item.metadata.name, item.spec.max_replicas) for item in listed] == [("h", 4)]


# --- reviews ---------------------------------------------------------------------------------------------------


def token_review(token: str) -> client.V1TokenReview:
    return client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))


def test_token_review_known_and_unknown(kube_emulator: KubeEmulator) -> None:
    kube_emulator.add_token("secret-1", "system:serviceaccount:monitoring:prometheus", ["system:serviceaccounts"])
    api = client.AuthenticationV1Api(kube_emulator.api_client())

    known = api.create_token_review(token_review("secret-1"))
    assert known.status.authenticated is True
    assert known.status.user.username == "system:serviceaccount:monitoring:prometheus"
    assert known.status.user.groups == ["system:serviceaccounts"]

    unknown = api.create_token_review(token_review("other"))
    assert unknown.status.authenticated is False


def access_review(user: str, verb: str, resource: str, namespace: str = NS, subresource: str = "",
                  groups: list[str] | None = None) -> client.V1SubjectAccessReview:
    attributes = client.V1ResourceAttributes(group="grove.io", resource=resource, verb=verb, namespace=namespace,
                                             subresource=subresource or None)
    return client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, groups=groups, resource_attributes=attributes))


@pytest.mark.parametrize(
    ("case", "review", "allowed"),
    [
        ("user rule matches", access_review("alice", "patch", "podcliques", subresource="scale"), True),
        ("other verb", access_review("alice", "delete", "podcliques", subresource="scale"), False),
        ("main resource not covered", access_review("alice", "patch", "podcliques"), False),
        ("other namespace", access_review("alice", "patch", "podcliques", namespace="kube-system",
                                          subresource="scale"), False),
        ("other user", access_review("bob", "patch", "podcliques", subresource="scale"), False),
        ("group rule", access_review("carol", "list", "podcliquesets", groups=["viewers"]), True),
    ],
)
def test_subject_access_review(kube_emulator: KubeEmulator, case: str, review, allowed: bool) -> None:
    kube_emulator.allow(user="alice", verbs=["get", "patch"], api_group="grove.io", resources=["podcliques/scale"],
                        namespace=NS)
    kube_emulator.allow(group="viewers", verbs=["get", "list", "watch"], api_group="grove.io")
    result = client.AuthorizationV1Api(kube_emulator.api_client()).create_subject_access_review(review)
    assert result.status.allowed is allowed, case


# --- faults and the request log --------------------------------------------------------------------------------


def test_fault_fails_count_requests(with_frontend: KubeEmulator) -> None:
    with_frontend.clear_requests()
    with_frontend.inject_fault(method="PATCH", path_regex=r".*/scale$", status=409, count=1)
    api = custom(with_frontend)
    with pytest.raises(ApiException) as error:
        api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend",
                                                 {"spec": {"replicas": 3}})
    assert error.value.status == 409
    assert status_of(error.value)["reason"] == "Conflict"
    assert with_frontend.get("pclq", NS, "mn-disagg-0-frontend")["spec"]["replicas"] == 2

    api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend",
                                             {"spec": {"replicas": 3}})
    patches = with_frontend.requests_matching("PATCH", r"/scale$")
    assert [(record.path.rsplit("/", 2)[-2], record.body, record.status) for record in patches] == [
        ("mn-disagg-0-frontend", {"spec": {"replicas": 3}}, 409),
        ("mn-disagg-0-frontend", {"spec": {"replicas": 3}}, 200),
    ]
    assert all(record.user_agent.startswith("OpenAPI-Generator") for record in patches)


def test_fault_retry_after_header(kube_emulator: KubeEmulator) -> None:
    kube_emulator.inject_fault(path_regex="/podcliques$", status=429, retry_after_seconds=3, count=None)
    response = urllib3.request("GET", f"{kube_emulator.url}/apis/grove.io/v1alpha1/namespaces/default/podcliques",
                               retries=False)
    assert response.status == 429
    assert response.headers["Retry-After"] == "3"
    assert response.json()["reason"] == "TooManyRequests"


def test_fault_delay_beyond_client_timeout(with_frontend: KubeEmulator) -> None:
    # Every attempt is delayed, because the client retries a read timeout.
    with_frontend.inject_fault(method="GET", path_regex="/scale$", delay_seconds=2.0, count=None)
    api = custom(with_frontend)
    with pytest.raises(urllib3.exceptions.HTTPError):
        api.get_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend",
                                               _request_timeout=0.3)


def test_fault_drop_connection(with_frontend: KubeEmulator) -> None:
    with_frontend.inject_fault(path_regex="/scale$", drop_connection=True, count=None)
    with pytest.raises(urllib3.exceptions.HTTPError):
        urllib3.request("GET", f"{with_frontend.url}/apis/grove.io/v1alpha1/namespaces/default/podcliques/"
                               "mn-disagg-0-frontend/scale", retries=False)
    with_frontend.clear_faults()
    scale = custom(with_frontend).get_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques",
                                                                     "mn-disagg-0-frontend")
    assert scale["spec"]["replicas"] == 2


def test_inject_fault_rejects_empty_fault(kube_emulator: KubeEmulator) -> None:
    with pytest.raises(ValueError, match="needs a status"):
        kube_emulator.inject_fault(path_regex="/scale$")


# --- Grove emulation -------------------------------------------------------------------------------------------

MULTINODE_CLIQUES = [
    "multinode-disaggregated-0-decode-0-dleader",
    "multinode-disaggregated-0-decode-0-dworker",
    "multinode-disaggregated-0-prefill-0-pleader",
    "multinode-disaggregated-0-prefill-0-pworker",
    "multinode-disaggregated-0-prefill-1-pleader",
    "multinode-disaggregated-0-prefill-1-pworker",
]


def test_grove_children_of_multinode_sample(multinode: KubeEmulator) -> None:
    assert multinode.names("pclq", NS) == MULTINODE_CLIQUES
    assert multinode.names("pcsg", NS) == ["multinode-disaggregated-0-decode", "multinode-disaggregated-0-prefill"]


def test_grove_member_clique_labels_and_owner(multinode: KubeEmulator) -> None:
    clique = multinode.get("pclq", NS, "multinode-disaggregated-0-prefill-1-pworker")
    group = multinode.get("pcsg", NS, "multinode-disaggregated-0-prefill")
    assert clique["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "grove-operator",
        "app.kubernetes.io/part-of": "multinode-disaggregated",
        "app.kubernetes.io/name": "multinode-disaggregated-0-prefill-1-pworker",
        "app.kubernetes.io/component": "pcsg-podclique",
        "grove.io/podcliqueset-replica-index": "0",
        "grove.io/podcliquescalinggroup": "multinode-disaggregated-0-prefill",
        "grove.io/podcliquescalinggroup-replica-index": "1",
    }
    [owner] = clique["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "PodCliqueScalingGroup", "multinode-disaggregated-0-prefill", group["metadata"]["uid"], True)


def test_grove_member_clique_spec_copies_template(multinode: KubeEmulator, shared_dir: Path) -> None:
    manifest = yaml.safe_load((shared_dir / "grove" / "multi-node-disaggregated.yaml").read_text())
    template = next(c for c in manifest["spec"]["template"]["cliques"] if c["name"] == "pworker")["spec"]
    spec = multinode.get("pclq", NS, "multinode-disaggregated-0-prefill-0-pworker")["spec"]
    assert spec["roleName"] == "pworker"
    assert spec["replicas"] == 4
    assert spec["minAvailable"] == 4
    assert spec["podSpec"] == template["podSpec"]


def test_grove_scaling_group_labels_spec_owner(multinode: KubeEmulator) -> None:
    group = multinode.get("pcsg", NS, "multinode-disaggregated-0-prefill")
    pcs = multinode.get("pcs", NS, "multinode-disaggregated")
    assert group["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "grove-operator",
        "app.kubernetes.io/part-of": "multinode-disaggregated",
        "app.kubernetes.io/name": "multinode-disaggregated-0-prefill",
        "app.kubernetes.io/component": "pcs-podcliquescalinggroup",
        "grove.io/podcliqueset-replica-index": "0",
    }
    assert group["spec"] == {"replicas": 2, "minAvailable": 1, "cliqueNames": ["pleader", "pworker"]}
    assert group["metadata"]["ownerReferences"][0]["uid"] == pcs["metadata"]["uid"]
    assert group["status"]["replicas"] == 2
    assert group["status"]["availableReplicas"] == 2


def test_grove_standalone_clique_labels_and_status(with_frontend: KubeEmulator) -> None:
    clique = with_frontend.get("pclq", NS, "mn-disagg-0-frontend")
    assert clique["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "grove-operator",
        "app.kubernetes.io/part-of": "mn-disagg",
        "app.kubernetes.io/name": "mn-disagg-0-frontend",
        "app.kubernetes.io/component": "pcs-podclique",
        "grove.io/podcliqueset-replica-index": "0",
    }
    assert clique["metadata"]["ownerReferences"][0]["kind"] == "PodCliqueSet"
    assert clique["status"]["replicas"] == 2
    assert clique["status"]["readyReplicas"] == 2
    pcs = with_frontend.get("pcs", NS, "mn-disagg")
    assert pcs["status"]["replicas"] == 1
    assert pcs["status"]["availableReplicas"] == 1
    assert pcs["status"]["hpaPodSelector"] == (
        "app.kubernetes.io/managed-by=grove-operator,app.kubernetes.io/part-of=mn-disagg")


def test_grove_pcs_scale_out_uses_template_values(with_frontend: KubeEmulator) -> None:
    api = custom(with_frontend)
    api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-prefill-0-pworker",
                                             {"spec": {"replicas": 6}})
    api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliquescalinggroups", "mn-disagg-0-prefill",
                                             {"spec": {"replicas": 3}})
    api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliquesets", "mn-disagg",
                                             {"spec": {"replicas": 2}})

    index_one = with_frontend.names("pclq", NS, label_selector="grove.io/podcliqueset-replica-index=1")
    assert index_one == ["mn-disagg-1-decode-0-dleader", "mn-disagg-1-decode-0-dworker", "mn-disagg-1-frontend",
                         "mn-disagg-1-prefill-0-pleader", "mn-disagg-1-prefill-0-pworker",
                         "mn-disagg-1-prefill-1-pleader", "mn-disagg-1-prefill-1-pworker"]
    assert with_frontend.get("pclq", NS, "mn-disagg-1-prefill-0-pworker")["spec"]["replicas"] == 3
    assert with_frontend.get("pcsg", NS, "mn-disagg-1-prefill")["spec"]["replicas"] == 2
    assert with_frontend.get("pclq", NS, "mn-disagg-0-prefill-0-pworker")["spec"]["replicas"] == 6
    assert with_frontend.get("pcs", NS, "mn-disagg")["status"]["replicas"] == 2


def test_grove_pcs_scale_in_removes_highest_index(with_frontend: KubeEmulator) -> None:
    api = custom(with_frontend)
    api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliquesets", "mn-disagg",
                                             {"spec": {"replicas": 3}})
    api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliquesets", "mn-disagg",
                                             {"spec": {"replicas": 1}})
    assert with_frontend.names("pcsg", NS) == ["mn-disagg-0-decode", "mn-disagg-0-prefill"]
    assert all(name.startswith("mn-disagg-0-") for name in with_frontend.names("pclq", NS))
    assert len(with_frontend.names("pclq", NS)) == 7


def test_grove_pcsg_scale_creates_and_removes_members(with_frontend: KubeEmulator) -> None:
    api = custom(with_frontend)
    api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliquescalinggroups", "mn-disagg-0-prefill",
                                             {"spec": {"replicas": 3}})
    members = with_frontend.names("pclq", NS, label_selector="grove.io/podcliquescalinggroup=mn-disagg-0-prefill")
    assert members == ["mn-disagg-0-prefill-0-pleader", "mn-disagg-0-prefill-0-pworker",
                       "mn-disagg-0-prefill-1-pleader", "mn-disagg-0-prefill-1-pworker",
                       "mn-disagg-0-prefill-2-pleader", "mn-disagg-0-prefill-2-pworker"]
    new_member = with_frontend.get("pclq", NS, "mn-disagg-0-prefill-2-pworker")
    assert new_member["spec"]["replicas"] == 3
    assert new_member["metadata"]["labels"]["grove.io/podcliquescalinggroup-replica-index"] == "2"
    assert with_frontend.get("pcsg", NS, "mn-disagg-0-prefill")["status"]["availableReplicas"] == 3

    api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliquescalinggroups", "mn-disagg-0-prefill",
                                             {"spec": {"replicas": 1}})
    members = with_frontend.names("pclq", NS, label_selector="grove.io/podcliquescalinggroup=mn-disagg-0-prefill")
    assert members == ["mn-disagg-0-prefill-0-pleader", "mn-disagg-0-prefill-0-pworker"]


def test_grove_recover_resets_to_template(with_frontend: KubeEmulator) -> None:
    api = custom(with_frontend)
    old_uid = with_frontend.get("pclq", NS, "mn-disagg-0-frontend")["metadata"]["uid"]
    api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend",
                                             {"spec": {"replicas": 5}})
    api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliquescalinggroups", "mn-disagg-0-prefill",
                                             {"spec": {"replicas": 3}})

    with_frontend.recover("mn-disagg", NS)

    frontend = with_frontend.get("pclq", NS, "mn-disagg-0-frontend")
    assert frontend["spec"]["replicas"] == 2
    assert frontend["metadata"]["uid"] != old_uid
    assert with_frontend.get("pcsg", NS, "mn-disagg-0-prefill")["spec"]["replicas"] == 2
    assert "mn-disagg-0-prefill-2-pworker" not in with_frontend.names("pclq", NS)
    assert len(with_frontend.names("pclq", NS)) == 7


def test_grove_recover_one_replica_index(with_frontend: KubeEmulator) -> None:
    api = custom(with_frontend)
    api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliquesets", "mn-disagg",
                                             {"spec": {"replicas": 2}})
    for name in ("mn-disagg-0-frontend", "mn-disagg-1-frontend"):
        api.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", name, {"spec": {"replicas": 5}})

    with_frontend.recover("mn-disagg", NS, replica_index=1)

    assert with_frontend.get("pclq", NS, "mn-disagg-0-frontend")["spec"]["replicas"] == 5
    assert with_frontend.get("pclq", NS, "mn-disagg-1-frontend")["spec"]["replicas"] == 2


def test_grove_manual_mode_lags_until_reconcile(make_kube_emulator, shared_dir: Path) -> None:
    emulator = make_kube_emulator(reconcile_mode="manual")
    emulator.apply_manifest(shared_dir / "grove" / "multinode-disaggregated-with-frontend.yaml")
    assert emulator.names("pclq", NS) == []

    emulator.reconcile()
    assert len(emulator.names("pclq", NS)) == 7
    custom(emulator).patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliques", "mn-disagg-0-frontend",
                                                          {"spec": {"replicas": 4}})
    assert emulator.get("pclq", NS, "mn-disagg-0-frontend")["status"]["replicas"] == 2

    emulator.reconcile()
    assert emulator.get("pclq", NS, "mn-disagg-0-frontend")["status"]["replicas"] == 4


def test_grove_background_mode_reconciles(make_kube_emulator, shared_dir: Path) -> None:
    emulator = make_kube_emulator(reconcile_mode="background", reconcile_interval=0.05)
    emulator.apply_manifest(shared_dir / "grove" / "multinode-disaggregated-with-frontend.yaml")
    done = threading.Event()
    for _ in range(200):
        if len(emulator.names("pclq", NS)) == 7:
            done.set()
            break
        done.wait(0.05)
    assert done.is_set()


def test_grove_pinned_ready_breaches_min_available(with_frontend: KubeEmulator) -> None:
    with_frontend.pin_ready_replicas("mn-disagg-0-prefill-1-pworker", 1)
    clique = with_frontend.get("pclq", NS, "mn-disagg-0-prefill-1-pworker")
    breached = next(c for c in clique["status"]["conditions"] if c["type"] == "MinAvailableBreached")
    assert clique["status"]["readyReplicas"] == 1
    assert breached["status"] == "True"
    assert with_frontend.get("pcsg", NS, "mn-disagg-0-prefill")["status"]["availableReplicas"] == 1

    with_frontend.pin_ready_replicas("mn-disagg-0-frontend", 0)
    assert with_frontend.get("pcs", NS, "mn-disagg")["status"]["availableReplicas"] == 0
    with_frontend.pin_ready_replicas("mn-disagg-0-frontend", None)
    assert with_frontend.get("pcs", NS, "mn-disagg")["status"]["availableReplicas"] == 1


def autoscaled_manifest(shared_dir: Path) -> dict:
    manifest = yaml.safe_load((shared_dir / "grove" / "multinode-disaggregated-with-frontend.yaml").read_text())
    template = manifest["spec"]["template"]
    template["cliques"][0]["spec"]["autoScalingConfig"] = {"maxReplicas": 6}
    template["podCliqueScalingGroups"][1]["scaleConfig"] = {"minReplicas": 1, "maxReplicas": 3}
    return manifest


def test_grove_hpas_for_autoscaled_targets(kube_emulator: KubeEmulator, shared_dir: Path) -> None:
    kube_emulator.apply_manifest(autoscaled_manifest(shared_dir))
    hpas = client.AutoscalingV2Api(kube_emulator.api_client()).list_namespaced_horizontal_pod_autoscaler(
        NS, label_selector="app.kubernetes.io/component=pcs-hpa").items
    summary = {hpa.metadata.name: (hpa.spec.scale_target_ref.kind, hpa.spec.min_replicas, hpa.spec.max_replicas)
               for hpa in hpas}
    assert summary == {"mn-disagg-0-frontend": ("PodClique", 2, 6),
                       "mn-disagg-0-decode": ("PodCliqueScalingGroup", 1, 3)}

    custom(kube_emulator).patch_namespaced_custom_object_scale(GROUP, VERSION, NS, "podcliquesets", "mn-disagg",
                                                               {"spec": {"replicas": 2}})
    assert kube_emulator.names("hpa", NS) == ["mn-disagg-0-decode", "mn-disagg-0-frontend", "mn-disagg-1-decode",
                                              "mn-disagg-1-frontend"]


@pytest.mark.parametrize(
    ("sample", "cliques"),
    [
        ("simple1.yaml", 4),
        ("simple3-explicit-startup-order.yaml", 11),
        ("single-node-disaggregated.yaml", 2),
        ("multi-node-disaggregated.yaml", 6),
        ("multinode-disaggregated-with-frontend.yaml", 7),
    ],
)
def test_grove_samples_accepted(kube_emulator: KubeEmulator, shared_dir: Path, sample: str, cliques: int) -> None:
    [pcs] = kube_emulator.apply_manifest(shared_dir / "grove" / sample)
    names = kube_emulator.names("pclq", NS, label_selector=f"app.kubernetes.io/part-of={pcs['metadata']['name']}")
    assert len(names) == cliques, sample


def test_grove_simple1_hpas(kube_emulator: KubeEmulator, shared_dir: Path) -> None:
    kube_emulator.apply_manifest(shared_dir / "grove" / "simple1.yaml")
    clique_hpa = kube_emulator.get("hpa", NS, "simple1-0-pca")
    group_hpa = kube_emulator.get("hpa", NS, "simple1-0-sga")
    assert clique_hpa["spec"]["scaleTargetRef"] == {"apiVersion": "grove.io/v1alpha1", "kind": "PodClique",
                                                    "name": "simple1-0-pca"}
    assert (clique_hpa["spec"]["minReplicas"], clique_hpa["spec"]["maxReplicas"]) == (3, 5)
    assert group_hpa["spec"]["scaleTargetRef"]["kind"] == "PodCliqueScalingGroup"
    assert group_hpa["spec"]["maxReplicas"] == 6
    assert group_hpa["metadata"]["labels"]["app.kubernetes.io/component"] == "pcs-hpa"
    assert group_hpa["status"]["currentReplicas"] == kube_emulator.get("pcsg", NS, "simple1-0-sga")["spec"]["replicas"]


@pytest.mark.parametrize(
    ("case", "change", "message"),
    [
        ("minAvailable above replicas", lambda t: t["cliques"][0]["spec"].update(minAvailable=3), "minAvailable"),
        ("maxReplicas below minReplicas",
         lambda t: t["cliques"][0]["spec"].update(autoScalingConfig={"minReplicas": 2, "maxReplicas": 1}),
         "maxReplicas"),
        ("autoscaled clique in group",
         lambda t: t["cliques"][1]["spec"].update(autoScalingConfig={"maxReplicas": 3}), "Forbidden"),
        ("unknown clique in group", lambda t: t["podCliqueScalingGroups"][0].update(cliqueNames=["nope"]),
         "cliqueNames"),
    ],
)
def test_grove_webhook_rejects_invalid_pcs(kube_emulator: KubeEmulator, shared_dir: Path, case: str, change,
                                           message: str) -> None:
    manifest = yaml.safe_load((shared_dir / "grove" / "multinode-disaggregated-with-frontend.yaml").read_text())
    change(manifest["spec"]["template"])
    with pytest.raises(ApiException) as error:
        custom(kube_emulator).create_namespaced_custom_object(GROUP, VERSION, NS, "podcliquesets", manifest)
    assert error.value.status == 422, case
    assert message in status_of(error.value)["message"], case


def test_grove_delete_pcs_removes_children(with_frontend: KubeEmulator) -> None:
    custom(with_frontend).delete_namespaced_custom_object(GROUP, VERSION, NS, "podcliquesets", "mn-disagg")
    assert with_frontend.names("pclq", NS) == []
    assert with_frontend.names("pcsg", NS) == []


# --- building blocks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "target", "patch", "expected"),
    [
        ("replace scalar", {"a": 1}, {"a": 2}, {"a": 2}),
        ("null deletes", {"a": 1, "b": 2}, {"a": None}, {"b": 2}),
        ("nested merge", {"a": {"x": 1, "y": 2}}, {"a": {"y": 3}}, {"a": {"x": 1, "y": 3}}),
        ("list replaced", {"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
    ],
)
def test_merge_patch_cases(case: str, target: dict, patch: dict, expected: dict) -> None:
    assert merge_patch(target, patch) == expected, case


@pytest.mark.parametrize(
    ("case", "operations", "expected"),
    [
        ("add key", [{"op": "add", "path": "/b", "value": 1}], {"a": [1, 2], "b": 1}),
        ("append", [{"op": "add", "path": "/a/-", "value": 3}], {"a": [1, 2, 3]}),
        ("remove item", [{"op": "remove", "path": "/a/0"}], {"a": [2]}),
        ("move", [{"op": "move", "from": "/a", "path": "/c"}], {"c": [1, 2]}),
        ("copy", [{"op": "copy", "from": "/a/1", "path": "/d"}], {"a": [1, 2], "d": 2}),
    ],
)
def test_json_patch_cases(case: str, operations: list, expected: dict) -> None:
    assert json_patch({"a": [1, 2]}, operations) == expected, case


label_values = st.sampled_from(["a", "b", "c"])
label_sets = st.dictionaries(st.sampled_from(["k", "j"]), label_values, max_size=2)


@given(labels=label_sets, value=label_values)
def test_selector_set_equals_equality_forms(labels: dict, value: str) -> None:
    obj = {"metadata": {"labels": labels}}
    assert Selector.parse(f"k in ({value})", None).matches(obj) == Selector.parse(f"k={value}", None).matches(obj)
    assert Selector.parse(f"k notin ({value})", None).matches(obj) == Selector.parse(f"k!={value}", None).matches(obj)
    assert Selector.parse("k", None).matches(obj) != Selector.parse("!k", None).matches(obj)


@given(target=st.dictionaries(st.sampled_from("abc"), st.integers(0, 3)),
       patch=st.dictionaries(st.sampled_from("abc"), st.one_of(st.none(), st.integers(0, 3))))
def test_merge_patch_is_idempotent(target: dict, patch: dict) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once
