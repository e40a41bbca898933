"""Kubernetes side: list Grove objects, read and patch `/scale`, emit Events.

Everything goes through the official `kubernetes` client. Writes go to the `/scale`
subresource only, because Grove's authorizer webhook may deny writes to the main objects.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from autoscaler.targets import GROUP, VERSION, Kind, TargetRef

logger = logging.getLogger(__name__)

FIELD_MANAGER = "grove-autoscaler"
# The pod name in a cluster (set from the downward API), else the host name and process id.
INSTANCE = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
CONFLICT_RETRIES = 3
DEFAULT_TIMEOUT_SECONDS = 10.0

# Errors a call may raise besides an HTTP error status: a dropped connection, a timeout, a reset.
TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)


class ScaleWriteError(Exception):
    """A `/scale` patch failed after its retries; the message names the object and the status."""


@dataclass(frozen=True)
class ScaleWrite:
    """The outcome of one successful `/scale` write: the replicas before and after."""

    ref: TargetRef
    old: int
    new: int
    attempts: int


class KubeClient:
    """Thin typed wrapper over the official client for the calls the controller makes."""

    def __init__(self, api_client: client.ApiClient, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.api_client = api_client
        self.timeout = timeout_seconds
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)

    def list_objects(self, kind: Kind, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        """List one Grove kind in a namespace; raise ApiException on failure."""
        response = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, kind.plural, label_selector=label_selector or None, _request_timeout=self.timeout
        )
        return list(response.get("items", []))

    def list_hpas(self, namespace: str) -> list[dict[str, Any]]:
        response = self.autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace, _request_timeout=self.timeout)
        return [self.api_client.sanitize_for_serialization(item) for item in response.items]

    def read_scale(self, ref: TargetRef) -> dict[str, Any]:
        """Return the object's autoscaling/v1 Scale as a dict."""
        return self.custom.get_namespaced_custom_object_scale(
            GROUP, VERSION, ref.namespace, ref.kind.plural, ref.name, _request_timeout=self.timeout
        )

    def patch_scale(self, ref: TargetRef, replicas: int, resource_version: str | None) -> ScaleWrite:
        """Set `/scale` spec.replicas, guarded by the resourceVersion the decision was made on.

        On 409 Conflict the scale is read again: if it already equals `replicas` nothing is
        written, otherwise the patch is retried on the fresh resourceVersion. The decision is
        not recomputed here; the next tick compares with the live value again.
        """
        old: int | None = None
        for attempt in range(1, CONFLICT_RETRIES + 1):
            body: dict[str, Any] = {"spec": {"replicas": replicas}}
            if resource_version:
                body["metadata"] = {"resourceVersion": resource_version}
            try:
                response = self.custom.patch_namespaced_custom_object_scale(
                    GROUP, VERSION, ref.namespace, ref.kind.plural, ref.name, body, field_manager=FIELD_MANAGER,
                    _request_timeout=self.timeout,
                )
            except TRANSPORT_ERRORS as error:
                raise ScaleWriteError(f"patch {ref} /scale to {replicas} failed: {type(error).__name__}: {error}") from error
            except ApiException as error:
                if error.status != 409 or attempt == CONFLICT_RETRIES:
                    raise ScaleWriteError(f"patch {ref} /scale to {replicas} failed: HTTP {error.status} {error.reason}") from error
                try:
                    fresh = self.read_scale(ref)
                except (ApiException, *TRANSPORT_ERRORS) as read_error:
                    raise ScaleWriteError(f"patch {ref} /scale to {replicas} failed: conflict, then reading it failed: {read_error}") from read_error
                old = int(fresh.get("spec", {}).get("replicas", 0))
                resource_version = fresh.get("metadata", {}).get("resourceVersion")
                logger.info("conflict on %s /scale, retrying on resourceVersion %s (live replicas %d)", ref, resource_version, old)
                if old == replicas:
                    return ScaleWrite(ref, old, replicas, attempt)
                continue
            status_replicas = int(response.get("spec", {}).get("replicas", replicas))
            return ScaleWrite(ref, replicas if old is None else old, status_replicas, attempt)
        raise AssertionError("unreachable")

    def emit_event(self, ref: TargetRef, uid: str | None, *, reason: str, message: str, event_type: str = "Normal") -> None:
        """Create a core/v1 Event on the object; an HTTP or transport failure is logged, not raised."""
        now = datetime.datetime.now(datetime.timezone.utc)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{ref.name}.{uuid.uuid4().hex[:16]}", namespace=ref.namespace),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=ref.kind.kind_name, name=ref.name, namespace=ref.namespace, uid=uid
            ),
            reason=reason,
            message=message[:1024],
            type=event_type,
            source=client.V1EventSource(component=FIELD_MANAGER),
            reporting_component=FIELD_MANAGER,
            reporting_instance=INSTANCE,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            self.core.create_namespaced_event(ref.namespace, event, _request_timeout=self.timeout)
        except ApiException as error:
            logger.warning("creating event %s on %s failed: HTTP %s %s", reason, ref, error.status, error.reason)
        except TRANSPORT_ERRORS as error:
            logger.warning("creating event %s on %s failed: %s: %s", reason, ref, type(error).__name__, error)
