"""In-memory object storage with a global resourceVersion counter, watch history and owner-based cleanup."""

from __future__ import annotations

import collections
import datetime
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, conflict, not_found
from .resources import ResourceType
from .selectors import Selector

# Events kept for watches that resume from an older resourceVersion; older ones get 410 Expired.
DEFAULT_HISTORY_LIMIT = 10_000


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clone(value: Any) -> Any:
    """Copy a JSON-shaped object (dicts, lists, scalars); much faster than copy.deepcopy for large lists."""
    if isinstance(value, dict):
        return {key: _clone(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clone(item) for item in value]
    return value


@dataclass(frozen=True)
class WatchEvent:
    """A stored change: ADDED, MODIFIED or DELETED, with the object as it was after the change."""

    resource_version: int
    type: str
    resource_type: ResourceType
    namespace: str
    object: dict[str, Any]


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    """Return what counts for metadata.generation: everything except metadata and status."""
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}


def _without_resource_version(obj: dict[str, Any]) -> dict[str, Any]:
    stripped = dict(obj)
    stripped["metadata"] = {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}
    return stripped


class Store:
    """Thread-safe object storage; every write takes the next value of one global resourceVersion counter.

    `condition` is notified after each write, so watches can wait on it.
    """

    def __init__(self, *, history_limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        self.condition = threading.Condition(threading.RLock())
        self._objects: dict[ResourceType, dict[tuple[str, str], dict[str, Any]]] = collections.defaultdict(dict)
        self._resource_version = 1
        self._history: collections.deque[WatchEvent] = collections.deque(maxlen=history_limit)

    @property
    def resource_version(self) -> int:
        with self.condition:
            return self._resource_version

    def try_get(self, resource_type: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        with self.condition:
            stored = self._objects[resource_type].get((namespace, name))
            return _clone(stored) if stored is not None else None

    def get(self, resource_type: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        found = self.try_get(resource_type, namespace, name)
        if found is None:
            raise not_found(resource_type, name)
        return found

    def list(self, resource_type: ResourceType, namespace: str | None,
             selector: Selector = Selector()) -> tuple[list[dict[str, Any]], int]:
        """Return matching objects sorted by namespace and name, and the resourceVersion of the list."""
        with self.condition:
            items = [
                _clone(obj)
                for (obj_namespace, _), obj in sorted(self._objects[resource_type].items())
                if (namespace is None or obj_namespace == namespace) and selector.matches(obj)
            ]
            return items, self._resource_version

    def create(self, resource_type: ResourceType, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Store a new object. The caller has checked that the name is free and has set metadata.namespace."""
        with self.condition:
            metadata = obj["metadata"]
            metadata["uid"] = str(uuid.uuid4())
            metadata["creationTimestamp"] = now_rfc3339()
            metadata["generation"] = 1
            obj["apiVersion"] = resource_type.api_version
            obj["kind"] = resource_type.kind
            if dry_run:
                metadata["resourceVersion"] = str(self._resource_version)
                return _clone(obj)
            return self._commit(resource_type, obj, "ADDED")

    def update(self, resource_type: ResourceType, obj: dict[str, Any], *, precondition_version: str | None,
               dry_run: bool = False) -> dict[str, Any]:
        """Replace an object, raising 409 Conflict when `precondition_version` is set and is not the current one.

        An update that changes nothing keeps the resourceVersion and sends no watch event, as on the real server.
        """
        metadata = obj["metadata"]
        namespace, name = metadata.get("namespace", ""), metadata["name"]
        with self.condition:
            current = self._objects[resource_type].get((namespace, name))
            if current is None:
                raise not_found(resource_type, name)
            current_metadata = current["metadata"]
            if precondition_version and precondition_version != current_metadata["resourceVersion"]:
                raise conflict(resource_type, name)

            for key in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
                if key in current_metadata:
                    metadata[key] = current_metadata[key]
                else:
                    metadata.pop(key, None)
            metadata["resourceVersion"] = current_metadata["resourceVersion"]
            obj["apiVersion"] = resource_type.api_version
            obj["kind"] = resource_type.kind
            if _without_resource_version(obj) == _without_resource_version(current):
                return _clone(current)
            if _spec_part(obj) != _spec_part(current):
                metadata["generation"] = current_metadata.get("generation", 1) + 1
            if dry_run:
                return _clone(obj)
            return self._commit(resource_type, obj, "MODIFIED")

    def delete(self, resource_type: ResourceType, namespace: str, name: str, *,
               precondition_version: str | None = None, dry_run: bool = False,
               registry_types: tuple[ResourceType, ...] = ()) -> dict[str, Any]:
        """Delete an object and, like the garbage collector, every object it owns (transitively).

        `registry_types` lists the types searched for owned objects. A deleted Namespace takes its objects along.
        """
        with self.condition:
            current = self._objects[resource_type].get((namespace, name))
            if current is None:
                raise not_found(resource_type, name)
            if precondition_version and precondition_version != current["metadata"]["resourceVersion"]:
                raise conflict(resource_type, name)
            if dry_run:
                return _clone(current)
            deleted = self._delete_one(resource_type, namespace, name)
            self._collect_dependents(deleted, resource_type, registry_types)
            return deleted

    def events_after(self, resource_version: int) -> list[WatchEvent]:
        """Return the stored events after `resource_version`, or raise 410 Expired if some are no longer kept."""
        with self.condition:
            if resource_version >= self._resource_version:
                return []
            if not self._history or self._history[0].resource_version > resource_version + 1:
                raise ApiError(410, "Expired", f"too old resource version: {resource_version} "
                                               f"({self._history[0].resource_version - 1 if self._history else 0})")
            return [event for event in self._history if event.resource_version > resource_version]

    def _commit(self, resource_type: ResourceType, obj: dict[str, Any], event_type: str) -> dict[str, Any]:
        self._resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self._resource_version)
        stored = _clone(obj)
        namespace = stored["metadata"].get("namespace", "")
        if event_type == "DELETED":
            self._objects[resource_type].pop((namespace, stored["metadata"]["name"]), None)
        else:
            self._objects[resource_type][(namespace, stored["metadata"]["name"])] = stored
        self._history.append(WatchEvent(self._resource_version, event_type, resource_type, namespace,
                                        _clone(stored)))
        self.condition.notify_all()
        return _clone(stored)

    def _delete_one(self, resource_type: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        current = _clone(self._objects[resource_type][(namespace, name)])
        return self._commit(resource_type, current, "DELETED")

    def _collect_dependents(self, deleted: dict[str, Any], deleted_type: ResourceType,
                            registry_types: tuple[ResourceType, ...]) -> None:
        owner_uid = deleted["metadata"]["uid"]
        namespace_deleted = deleted_type.kind == "Namespace" and not deleted_type.group
        for resource_type in registry_types:
            for (namespace, name), obj in list(self._objects[resource_type].items()):
                if (namespace, name) not in self._objects[resource_type]:
                    continue
                owners = obj["metadata"].get("ownerReferences") or []
                owned = any(reference.get("uid") == owner_uid for reference in owners)
                in_namespace = namespace_deleted and namespace == deleted["metadata"]["name"]
                if owned or in_namespace:
                    dependent = self._delete_one(resource_type, namespace, name)
                    self._collect_dependents(dependent, resource_type, registry_types)
