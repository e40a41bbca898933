"""Discovery documents (`/api`, `/apis`, group versions), `/version` and a skeleton `/openapi/v3`.

Discovery is served in its legacy (non-aggregated) form. Clients that request aggregated discovery
(apidiscovery.k8s.io) fall back to it when the response Content-Type is plain application/json, as client-go
and kubectl 1.32 do. `/openapi/v2` is not served (404).
"""

from __future__ import annotations

from typing import Any

from .resources import ResourceRegistry, ResourceType

# Reported server version; kubectl 1.32 is the client the tests use, and wrappers pick a client from it.
SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-12-11T00:00:00Z",
    "goVersion": "go1.23.3",
    "compiler": "gc",
    "platform": "linux/amd64",
}

_SCALE_VERBS = ["get", "patch", "update"]


def _resource_entries(resource_type: ResourceType) -> list[dict[str, Any]]:
    main: dict[str, Any] = {
        "name": resource_type.plural,
        "singularName": resource_type.singular,
        "namespaced": resource_type.namespaced,
        "kind": resource_type.kind,
        "verbs": list(resource_type.verbs),
    }
    if resource_type.short_names:
        main["shortNames"] = list(resource_type.short_names)
    if resource_type.categories:
        main["categories"] = list(resource_type.categories)
    entries = [main]
    if resource_type.has_status:
        entries.append({"name": f"{resource_type.plural}/status", "singularName": "",
                        "namespaced": resource_type.namespaced, "kind": resource_type.kind,
                        "verbs": _SCALE_VERBS})
    if resource_type.scale is not None:
        entries.append({"name": f"{resource_type.plural}/scale", "singularName": "",
                        "namespaced": resource_type.namespaced, "group": "autoscaling", "version": "v1",
                        "kind": "Scale", "verbs": _SCALE_VERBS})
    return entries


def api_versions(server_address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    version_entries = [{"groupVersion": f"{name}/{version}", "version": version} for version in versions]
    return {"name": name, "versions": version_entries, "preferredVersion": version_entries[0]}


def api_group_list(registry: ResourceRegistry) -> dict[str, Any]:
    groups = [_group(name, versions) for name, versions in registry.group_versions().items()]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: ResourceRegistry, name: str) -> dict[str, Any] | None:
    versions = registry.group_versions().get(name)
    if versions is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}


def api_resource_list(registry: ResourceRegistry, prefix: str) -> dict[str, Any] | None:
    types = registry.in_group_version(prefix)
    if not types:
        return None
    resources = [entry for resource_type in types for entry in _resource_entries(resource_type)]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": types[0].api_version,
            "resources": resources}


def _group_version_path(resource_type: ResourceType) -> str:
    return resource_type.prefix.lstrip("/")


def openapi_v3_root(registry: ResourceRegistry) -> dict[str, Any]:
    """Return the `/openapi/v3` index: one document per group version, as kube-apiserver lists them."""
    paths = {}
    for resource_type in registry.types:
        path = _group_version_path(resource_type)
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}"}
    return {"paths": paths}


def openapi_v3_group_version(registry: ResourceRegistry, path: str) -> dict[str, Any] | None:
    """Return a skeleton OpenAPI v3 document of one group version, or None if it is not served.

    It lists each resource's PATCH operation with its group-version-kind and the fieldValidation query
    parameter, which is what kubectl 1.32 reads to decide that the server validates fields itself.
    NOTE: no schemas are included, so clients get no OpenAPI schema for any kind from the emulator.
    """
    types = [t for t in registry.types if _group_version_path(t) == path and not t.create_only]
    if not types:
        return None
    field_validation = {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}
    paths = {}
    for resource_type in types:
        scope = "/namespaces/{namespace}" if resource_type.namespaced else ""
        gvk = {"group": resource_type.group, "version": resource_type.version, "kind": resource_type.kind}
        operation = {"operationId": f"patch{resource_type.kind}", "parameters": [field_validation],
                     "responses": {"200": {"description": "OK"}}, "x-kubernetes-group-version-kind": gvk}
        paths[f"{resource_type.prefix}{scope}/{resource_type.plural}/{{name}}"] = {"patch": operation}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
            "paths": paths, "components": {"schemas": {}}}
