"""Request semantics of the API server, independent of HTTP: create, update, patch, delete and `/scale`."""

from __future__ import annotations

import copy
import random
import re
import string
from collections.abc import Callable
from typing import Any

from .errors import ApiError, already_exists, bad_request, invalid, not_found, unsupported_media_type
from .patches import JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, apply_patch
from .resources import ResourceRegistry, ResourceType
from .schema import normalize_object
from .selectors import Selector
from .store import Store

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
FIELD_VALIDATION_MODES = ("Strict", "Warn", "Ignore")


def get_path(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    """Return the value at `path`, or None when any key on the way is missing."""
    value: Any = obj
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def set_path(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        obj = obj.setdefault(key, {})
    obj[path[-1]] = value


class ResourceApi:
    """The server's object semantics.

    `mutate` and `validate` are the admission webhooks: `mutate` changes an object before schema pruning,
    defaulting and validation, `validate` raises ApiError to reject it afterwards. Both run on create and on
    updates of the main resource, not on `/status` or `/scale` writes.
    `after_write` runs after every stored change, outside dry runs.
    """

    def __init__(self, registry: ResourceRegistry, store: Store, *,
                 mutate: Callable[[ResourceType, dict[str, Any]], None] | None = None,
                 validate: Callable[[ResourceType, dict[str, Any]], None] | None = None,
                 after_write: Callable[[ResourceType, dict[str, Any]], None] | None = None) -> None:
        self.registry = registry
        self.store = store
        self.mutate = mutate or (lambda resource_type, obj: None)
        self.validate = validate or (lambda resource_type, obj: None)
        self.after_write = after_write or (lambda resource_type, obj: None)
        self._namespace_type = registry.by_path("/api/v1", "namespaces")

    def create(self, resource_type: ResourceType, namespace: str, body: Any, *, dry_run: bool = False,
               field_validation: str = "Warn") -> tuple[dict[str, Any], list[str]]:
        """Create an object and return it with the warnings to send back (one per pruned unknown field)."""
        obj = self._check_body(resource_type, namespace, body)
        metadata = obj["metadata"]
        if not metadata.get("name"):
            prefix = metadata.get("generateName")
            if not prefix:
                raise invalid(resource_type, "", [{"field": "metadata.name", "reason": "FieldValueRequired",
                                                   "message": "Required value: name or generateName is required"}])
            metadata["name"] = prefix + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        name = metadata["name"]
        if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
            raise invalid(resource_type, name, [{
                "field": "metadata.name", "reason": "FieldValueInvalid",
                "message": f"Invalid value: {name!r}: a lowercase RFC 1123 subdomain must consist of lower case "
                           "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                           "character"}])
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
            metadata.pop(key, None)
        if resource_type.has_status and resource_type.custom:
            # The status subresource makes the server drop status on create, as for updates of the main resource.
            obj.pop("status", None)
        if resource_type is self._namespace_type:
            obj["status"] = {"phase": "Active"}

        self.mutate(resource_type, obj)
        obj, warnings = self._normalize(resource_type, name, obj, field_validation)
        self.validate(resource_type, obj)
        with self.store.condition:
            self._require_namespace(resource_type, namespace)
            if self.store.try_get(resource_type, namespace if resource_type.namespaced else "", name) is not None:
                raise already_exists(resource_type, name)
            created = self.store.create(resource_type, obj, dry_run=dry_run)
        if not dry_run:
            self.after_write(resource_type, created)
        return created, warnings

    def get(self, resource_type: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        return self.store.get(resource_type, namespace, name)

    def list(self, resource_type: ResourceType, namespace: str | None,
             selector: Selector = Selector()) -> tuple[list[dict[str, Any]], int]:
        return self.store.list(resource_type, namespace, selector)

    def update(self, resource_type: ResourceType, namespace: str, name: str, body: Any, *,
               subresource: str | None = None, dry_run: bool = False,
               field_validation: str = "Warn") -> tuple[dict[str, Any], list[str]]:
        """Replace an object (PUT), or only its status when `subresource` is "status"."""
        obj = self._check_body(resource_type, namespace, body)
        if obj["metadata"].get("name") != name:
            raise bad_request(f'the name of the object ({obj["metadata"].get("name")}) does not match the name '
                              f"on the URL ({name})")
        precondition = obj["metadata"].get("resourceVersion")
        if resource_type.custom and not precondition:
            raise invalid(resource_type, name, [{"field": "metadata.resourceVersion", "reason": "FieldValueInvalid",
                                                 "message": "Invalid value: 0x0: must be specified for an update"}])
        with self.store.condition:
            current = self.store.get(resource_type, namespace, name)
            return self._write(resource_type, current, obj, precondition, subresource=subresource,
                               dry_run=dry_run, field_validation=field_validation)

    def patch(self, resource_type: ResourceType, namespace: str, name: str, patch: Any, content_type: str, *,
              subresource: str | None = None, dry_run: bool = False,
              field_validation: str = "Warn") -> tuple[dict[str, Any], list[str]]:
        self._check_patch_type(resource_type, content_type)
        with self.store.condition:
            current = self.store.get(resource_type, namespace, name)
            patched = apply_patch(current, patch, content_type)
            patched_version = (patched.get("metadata") or {}).get("resourceVersion")
            precondition = patched_version if patched_version != current["metadata"]["resourceVersion"] else None
            if precondition is None:
                patched.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
            patched["metadata"]["name"] = name
            if resource_type.namespaced:
                patched["metadata"]["namespace"] = namespace
            return self._write(resource_type, current, patched, precondition or current["metadata"]["resourceVersion"],
                               subresource=subresource, dry_run=dry_run, field_validation=field_validation)

    def delete(self, resource_type: ResourceType, namespace: str, name: str, *, precondition_version: str | None = None,
               dry_run: bool = False) -> dict[str, Any]:
        deleted = self.store.delete(resource_type, namespace, name, precondition_version=precondition_version,
                                    dry_run=dry_run, registry_types=self.registry.types)
        if not dry_run:
            self.after_write(resource_type, deleted)
        return deleted

    def get_scale(self, resource_type: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        """Return the autoscaling/v1 Scale view of an object through its CRD's scale paths."""
        paths = self._scale_paths(resource_type)
        obj = self.store.get(resource_type, namespace, name)
        metadata = obj["metadata"]
        scale: dict[str, Any] = {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {key: metadata[key] for key in ("name", "namespace", "uid", "resourceVersion",
                                                        "creationTimestamp") if key in metadata},
            "spec": {"replicas": get_path(obj, paths.spec_replicas) or 0},
            "status": {"replicas": get_path(obj, paths.status_replicas) or 0},
        }
        selector = get_path(obj, paths.label_selector) if paths.label_selector else None
        if selector:
            scale["status"]["selector"] = selector
        return scale

    def update_scale(self, resource_type: ResourceType, namespace: str, name: str, body: Any, *,
                     dry_run: bool = False) -> dict[str, Any]:
        """Write spec.replicas of a Scale into the object. A stale metadata.resourceVersion raises 409 Conflict."""
        if not isinstance(body, dict):
            raise bad_request(f"invalid Scale body: expected a JSON object, got {type(body).__name__}")
        paths = self._scale_paths(resource_type)
        replicas = (body.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise ApiError(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                                           f"{replicas!r}: must be an integer greater than or equal to 0")
        precondition = (body.get("metadata") or {}).get("resourceVersion") or None
        with self.store.condition:
            current = self.store.get(resource_type, namespace, name)
            target = copy.deepcopy(current)
            set_path(target, paths.spec_replicas, replicas)
            self.store.update(resource_type, target, precondition_version=precondition, dry_run=dry_run)
            scale = self.get_scale(resource_type, namespace, name)
            if dry_run:
                scale["spec"]["replicas"] = replicas
                return scale
        # The response shows the write alone, before any controller reacts to it.
        self.after_write(resource_type, target)
        return scale

    def patch_scale(self, resource_type: ResourceType, namespace: str, name: str, patch: Any, content_type: str,
                    *, dry_run: bool = False) -> dict[str, Any]:
        self._check_patch_type(resource_type, content_type)
        with self.store.condition:
            patched = apply_patch(self.get_scale(resource_type, namespace, name), patch, content_type)
            return self.update_scale(resource_type, namespace, name, patched, dry_run=dry_run)

    def _write(self, resource_type: ResourceType, current: dict[str, Any], obj: dict[str, Any],
               precondition: str | None, *, subresource: str | None, dry_run: bool,
               field_validation: str) -> tuple[dict[str, Any], list[str]]:
        if subresource == "status":
            if not resource_type.has_status:
                raise not_found(resource_type, f'{current["metadata"]["name"]}/status')
            target = copy.deepcopy(current)
            if "status" in obj:
                target["status"] = obj["status"]
            else:
                target.pop("status", None)
            obj = target
        elif resource_type.has_status:
            # Writes to the main resource cannot change status when the status subresource exists.
            if "status" in current:
                obj["status"] = current["status"]
            else:
                obj.pop("status", None)
        if subresource is None:
            self.mutate(resource_type, obj)
        obj, warnings = self._normalize(resource_type, current["metadata"]["name"], obj, field_validation)
        if subresource is None:
            self.validate(resource_type, obj)
        written = self.store.update(resource_type, obj, precondition_version=precondition, dry_run=dry_run)
        if not dry_run:
            self.after_write(resource_type, written)
        return written, warnings

    def _check_body(self, resource_type: ResourceType, namespace: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request(f"invalid {resource_type.kind} body: expected a JSON object, got {type(body).__name__}")
        obj = copy.deepcopy(body)
        if obj.get("kind") not in (None, resource_type.kind):
            raise bad_request(f"kind {obj['kind']!r} in the body does not match {resource_type.kind!r} of the URL")
        if obj.get("apiVersion") not in (None, resource_type.api_version):
            raise bad_request(f"apiVersion {obj['apiVersion']!r} in the body does not match "
                              f"{resource_type.api_version!r} of the URL")
        metadata = obj.get("metadata")
        if metadata is None:
            metadata = obj["metadata"] = {}
        if not isinstance(metadata, dict):
            raise bad_request(f"invalid metadata: expected a JSON object, got {type(metadata).__name__}")
        if resource_type.namespaced:
            if metadata.get("namespace") not in (None, "", namespace):
                raise bad_request("the namespace of the provided object does not match the namespace sent on "
                                  f"the request ({metadata['namespace']!r} != {namespace!r})")
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        return obj

    def _normalize(self, resource_type: ResourceType, name: str, obj: dict[str, Any],
                   field_validation: str) -> tuple[dict[str, Any], list[str]]:
        if field_validation not in FIELD_VALIDATION_MODES:
            raise bad_request(f"invalid fieldValidation {field_validation!r}: use one of "
                              f"{', '.join(FIELD_VALIDATION_MODES)}")
        if resource_type.schema is None:
            return obj, []
        normalized, outcome = normalize_object(resource_type.schema, obj)
        if outcome.unknown_fields and field_validation == "Strict":
            fields = ", ".join(f'unknown field "{path}"' for path in outcome.unknown_fields)
            raise bad_request(f"strict decoding error: {fields}")
        if outcome.causes:
            raise invalid(resource_type, name, outcome.causes)
        if field_validation == "Ignore":
            return normalized, []
        return normalized, [f'unknown field "{path}"' for path in outcome.unknown_fields]

    def _check_patch_type(self, resource_type: ResourceType, content_type: str) -> None:
        allowed = [JSON_PATCH, MERGE_PATCH] + ([] if resource_type.custom else [STRATEGIC_MERGE_PATCH])
        if content_type not in allowed:
            # Custom resources reject strategic merge patch with 415 because they have no patch merge keys.
            raise unsupported_media_type(content_type)

    def _require_namespace(self, resource_type: ResourceType, namespace: str) -> None:
        if resource_type.namespaced and self._namespace_type is not None:
            if self.store.try_get(self._namespace_type, "", namespace) is None:
                raise not_found(self._namespace_type, namespace)

    def _scale_paths(self, resource_type: ResourceType):
        if resource_type.scale is None:
            raise not_found(resource_type, "scale")
        return resource_type.scale
