"""KubeEmulator: an in-process Kubernetes API server with the Grove CRDs and an emulated Grove operator."""

from __future__ import annotations

import enum
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml

from . import grove_admission
from .api import ResourceApi
from .auth import AccessControl, AllowRule
from .grove_controller import GroveController
from .resources import BUILTIN_TYPES, ResourceRegistry, ResourceType
from .selectors import Selector
from .server import EmulatorHTTPServer
from .store import Store
from .traffic import Fault, RequestRecord, Traffic

logger = logging.getLogger(__name__)

INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class ReconcileMode(str, enum.Enum):
    """When the emulated Grove operator runs."""

    IMMEDIATE = "immediate"  # inside every write to a Grove object, before the response is sent
    MANUAL = "manual"  # only when the test calls reconcile()
    BACKGROUND = "background"  # in a thread, every reconcile_interval seconds


class KubeEmulator:
    """A Kubernetes API server on 127.0.0.1 (plain HTTP, free port) serving the given CRDs and built-in kinds.

    Use as a context manager, or call start() and stop(). Objects written through HTTP and through the
    helper methods share one store; only HTTP requests appear in `requests`.
    """

    def __init__(self, crds: Iterable[ResourceType], *, workdir: Path,
                 reconcile_mode: ReconcileMode | str = ReconcileMode.IMMEDIATE,
                 reconcile_interval: float = 0.1) -> None:
        self.reconcile_mode = ReconcileMode(reconcile_mode)
        if reconcile_interval <= 0:
            raise ValueError(f"invalid reconcile_interval {reconcile_interval!r}: must be > 0 seconds")
        self.reconcile_interval = reconcile_interval
        self.workdir = Path(workdir)
        self.registry = ResourceRegistry(tuple(crds) + BUILTIN_TYPES)
        self.store = Store()
        self.api = ResourceApi(self.registry, self.store, mutate=grove_admission.mutate,
                               validate=grove_admission.validate, after_write=self._after_write)
        self.grove = GroveController(self.api)
        self.access = AccessControl()
        self.traffic = Traffic()
        self._server: EmulatorHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._clients: list[kubernetes.client.ApiClient] = []
        self.kubeconfig = self.workdir / "kubeconfig"

        namespace_type = self.registry.resolve("namespaces")
        for namespace in INITIAL_NAMESPACES:
            self.api.create(namespace_type, "", {"metadata": {"name": namespace}})

    def __enter__(self) -> KubeEmulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not running: call start() first")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        """Start serving in a background thread and write the kubeconfig file that points at it."""
        self._server = EmulatorHTTPServer(self.api, self.access, self.traffic)
        self._start_thread("kube-emulator-http", lambda: self._server.serve_forever(poll_interval=0.05))
        if self.reconcile_mode is ReconcileMode.BACKGROUND:
            self._start_thread("kube-emulator-grove", self._reconcile_loop)
        self._write_kubeconfig()
        logger.info("kube emulator serving %s (grove reconcile %s)", self.url, self.reconcile_mode.value)

    def stop(self) -> None:
        """Close client connections and watches, then stop the threads. Calling it twice is safe."""
        self._stop.set()
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self._server is not None:
            self._server.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def api_client(self) -> kubernetes.client.ApiClient:
        """Return an ApiClient of the official `kubernetes` package configured for this server. stop() closes it."""
        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        client = kubernetes.client.ApiClient(configuration)
        self._clients.append(client)
        return client

    def resource_type(self, resource: str) -> ResourceType:
        """Resolve `podcliques`, `pclq`, `PodClique` or `events.events.k8s.io` to the served type."""
        return self.registry.resolve(resource)

    def apply_manifest(self, source: Path | str | dict[str, Any] | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create every object of a YAML file (multi-document), a dict or a list of dicts, and return what was stored.

        Objects go through the same admission, schema and Grove reconcile as an HTTP create. A missing
        namespace is created first (a real server would reject the object instead).
        """
        if isinstance(source, (str, Path)):
            documents = [doc for doc in yaml.safe_load_all(Path(source).read_text()) if doc]
        elif isinstance(source, dict):
            documents = [source]
        else:
            documents = list(source)
        created = []
        for document in documents:
            resource_type = self._type_of(document)
            namespace = ""
            if resource_type.namespaced:
                namespace = (document.get("metadata") or {}).get("namespace") or "default"
                self._ensure_namespace(namespace)
            obj, _ = self.api.create(resource_type, namespace, document)
            created.append(obj)
        return created

    def create(self, resource: str, obj: dict[str, Any], *, namespace: str = "default") -> dict[str, Any]:
        """Create one object as an HTTP create would, making the namespace first if it is missing."""
        resource_type = self.resource_type(resource)
        if resource_type.namespaced:
            self._ensure_namespace(namespace)
        created, _ = self.api.create(resource_type, namespace if resource_type.namespaced else "", obj)
        return created

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        """Return a copy of the stored object, or raise ApiError 404 when it does not exist."""
        resource_type = self.resource_type(resource)
        return self.api.get(resource_type, namespace if resource_type.namespaced else "", name)

    def list(self, resource: str, namespace: str | None = None, *,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        items, _ = self.api.list(self.resource_type(resource), namespace, Selector.parse(label_selector, None))
        return items

    def names(self, resource: str, namespace: str | None = None, *, label_selector: str | None = None) -> list[str]:
        """Return the sorted names of matching objects."""
        return sorted(obj["metadata"]["name"] for obj in self.list(resource, namespace, label_selector=label_selector))

    @property
    def requests(self) -> list[RequestRecord]:
        """Every HTTP request received so far, oldest first (a copy)."""
        return self.traffic.records

    def requests_matching(self, method: str | None = None, path_regex: str = "") -> list[RequestRecord]:
        pattern = re.compile(path_regex)
        return [record for record in self.requests
                if (method is None or record.method == method.upper()) and pattern.search(record.path)]

    def clear_requests(self) -> None:
        self.traffic.clear_records()

    def inject_fault(self, *, method: str | None = None, path_regex: str = "", status: int | None = None,
                     count: int | None = 1, delay_seconds: float = 0.0, reason: str | None = None,
                     message: str | None = None, drop_connection: bool = False,
                     retry_after_seconds: int | None = None) -> Fault:
        """Make the next `count` matching requests (None: all) wait `delay_seconds`, then fail or drop.

        With `status` set, the request fails with a Status of that code. With `drop_connection`, the socket is
        closed with no response. With neither, the request is only delayed. Faults apply in the order added.
        """
        if status is None and not drop_connection and delay_seconds <= 0:
            raise ValueError("a fault needs a status, drop_connection=True or a positive delay_seconds")
        if count is not None and count < 1:
            raise ValueError(f"invalid count {count!r}: must be >= 1, or None for every matching request")
        return self.traffic.add_fault(Fault(
            method=method.upper() if method else None, path_pattern=re.compile(path_regex), status=status,
            count=count, delay_seconds=delay_seconds, reason=reason, message=message,
            drop_connection=drop_connection, retry_after_seconds=retry_after_seconds))

    def clear_faults(self) -> None:
        self.traffic.clear_faults()

    def reconcile(self) -> None:
        """Run one full pass of the emulated Grove operator."""
        self.grove.reconcile()

    def recover(self, pcs_name: str, namespace: str = "default", *, replica_index: int | None = None) -> None:
        """Recreate a PodCliqueSet's children (one replica index or all) at template values, like gang recovery."""
        self.grove.recover(namespace, pcs_name, replica_index)

    def pin_ready_replicas(self, podclique: str, ready: int | None, *, namespace: str = "default") -> None:
        """Make a PodClique report at most `ready` ready pods (None: all ready), then reconcile in IMMEDIATE mode."""
        self.grove.pin_ready_replicas(namespace, podclique, ready)
        if self.reconcile_mode is ReconcileMode.IMMEDIATE:
            self.grove.reconcile()

    def add_token(self, token: str, user: str, groups: Sequence[str] = (), *, uid: str = "") -> None:
        """Register a bearer token that TokenReview reports as authenticated for `user` and `groups`."""
        self.access.add_token(token, user, tuple(groups), uid=uid)

    def allow(self, *, user: str | None = None, group: str | None = None, verbs: Sequence[str] = ("*",),
              api_group: str = "*", resources: Sequence[str] = ("*",), namespace: str = "*") -> None:
        """Add a rule that SubjectAccessReview allows. A resource may name a subresource (`podcliques/scale`)."""
        self.access.allow(AllowRule(user=user, group=group, verbs=tuple(verbs), api_group=api_group,
                                    resources=tuple(resources), namespace=namespace))

    def _after_write(self, resource_type: ResourceType, obj: dict[str, Any]) -> None:
        """In IMMEDIATE mode, reconcile the PodCliqueSet the written object belongs to.

        Reconciling only that set keeps bulk creates linear in the number of sets.
        """
        if self.reconcile_mode is not ReconcileMode.IMMEDIATE or resource_type not in self.grove.grove_types:
            return
        metadata = obj.get("metadata", {})
        if obj.get("kind") == "PodCliqueSet":
            pcs_name = metadata.get("name")
        else:
            pcs_name = (metadata.get("labels") or {}).get("app.kubernetes.io/part-of")
        if pcs_name is None:
            self.grove.reconcile()
        else:
            self.grove.reconcile(only=(metadata.get("namespace", ""), pcs_name))

    def _reconcile_loop(self) -> None:
        while not self._stop.wait(self.reconcile_interval):
            try:
                self.grove.reconcile()
            except Exception:  # noqa: BLE001 - keep the loop alive; the failure is logged with its traceback
                logger.exception("emulated grove reconcile failed; retrying in %s s", self.reconcile_interval)

    def _start_thread(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _type_of(self, document: dict[str, Any]) -> ResourceType:
        api_version, kind = document.get("apiVersion"), document.get("kind")
        for resource_type in self.registry.types:
            if resource_type.api_version == api_version and resource_type.kind == kind:
                return resource_type
        raise ValueError(f"invalid manifest: apiVersion {api_version!r} kind {kind!r} is not served by the emulator")

    def _ensure_namespace(self, namespace: str) -> None:
        namespace_type = self.registry.resolve("namespaces")
        if self.store.try_get(namespace_type, "", namespace) is None:
            self.api.create(namespace_type, "", {"metadata": {"name": namespace}})

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kube-emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "kube-emulator", "user": {}}],
            "contexts": [{"name": "kube-emulator",
                          "context": {"cluster": "kube-emulator", "user": "kube-emulator", "namespace": "default"}}],
            "current-context": "kube-emulator",
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
