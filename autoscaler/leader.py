"""Leader election on a `coordination.k8s.io/v1` Lease, so only one replica writes `/scale`.

The algorithm follows client-go's leaderelection package. A candidate takes the Lease when
it is free, or when its record has not changed for `lease_duration_seconds` as measured on
the candidate's own clock. Timestamps written by another host are never compared. Every
write carries the resourceVersion that was read, so of two racing candidates one gets 409
Conflict and loses.

Fencing: `is_leader()` turns false once `renew_deadline_seconds` have passed since the
start of the last successful renew request. Another candidate can take over no earlier than
`lease_duration_seconds` after it saw that renewal, so a stale leader stops writing at least
`lease_duration_seconds - renew_deadline_seconds` before anyone else starts, provided each
write is issued right after an `is_leader()` check and takes less than that margin.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

logger = logging.getLogger(__name__)

DEFAULT_LEASE_NAME = "grove-autoscaler"


def default_identity() -> str:
    """Return a unique identity: the pod name (or host name) and a random suffix."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def default_namespace() -> str:
    """Return the Lease namespace: POD_NAMESPACE, the service account's namespace, or `default`."""
    namespace = os.environ.get("POD_NAMESPACE")
    if namespace:
        return namespace
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as namespace_file:
            return namespace_file.read().strip() or "default"
    except OSError:
        return "default"


@dataclass(frozen=True)
class LeaseTiming:
    """Lease timing in seconds, with client-go's defaults (15 s, 10 s, 2 s)."""

    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_seconds < self.renew_deadline_seconds < self.lease_duration_seconds:
            raise ValueError(
                "lease timing must satisfy 0 < retry period < renew deadline < lease duration, got "
                f"retry period {self.retry_period_seconds:g} s, renew deadline {self.renew_deadline_seconds:g} s, "
                f"lease duration {self.lease_duration_seconds:g} s"
            )


class LeaderElector:
    """Acquires, renews and releases one Lease for one candidate identity.

    `run` loops until `stop()`, calling `try_acquire_or_renew` (one attempt) every retry
    period. `on_started_leading` and `on_stopped_leading` run in the loop thread and must
    return quickly. `clock` is monotonic seconds; `wall_clock` stamps the Lease times.
    """

    def __init__(
        self,
        *,
        api_client: client.ApiClient,
        namespace: str,
        name: str = DEFAULT_LEASE_NAME,
        identity: str,
        timing: LeaseTiming = LeaseTiming(),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc),
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
    ) -> None:
        if not identity:
            raise ValueError("leader election identity must not be empty")
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self.clock = clock
        self.wall_clock = wall_clock
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        # A hung request must not outlive the renew deadline by much, although is_leader() is
        # fenced by the clock either way.
        self._request_timeout = timing.renew_deadline_seconds

        self._lock = threading.Lock()
        self._renewed_at: float | None = None
        # The last Lease record seen and when it was first seen, on `clock`: expiry is judged
        # from this local time, never from the record's own timestamps.
        self._observed_record: tuple | None = None
        self._observed_at = 0.0
        self._was_leader = False
        self._stop = threading.Event()
        self._release_on_stop = True

    def is_leader(self) -> bool:
        """Return True while the last successful renew started less than the renew deadline ago."""
        with self._lock:
            renewed_at = self._renewed_at
        return renewed_at is not None and self.clock() - renewed_at < self.timing.renew_deadline_seconds

    def try_acquire_or_renew(self) -> bool:
        """Make one attempt to acquire or renew the Lease; return whether this candidate is the leader."""
        attempt_started = self.clock()
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self._request_timeout)
        except ApiException as error:
            if error.status != 404:
                return self._failed(f"cannot read Lease {self.namespace}/{self.name}: HTTP {error.status} {error.reason}")
            return self._create(attempt_started)
        except urllib3.exceptions.HTTPError as error:
            return self._failed(f"cannot read Lease {self.namespace}/{self.name}: {error}")

        spec = lease.spec or client.V1LeaseSpec()
        record = _record_of(spec)
        if record != self._observed_record:
            self._observed_record = record
            self._observed_at = self.clock()

        holder = spec.holder_identity or ""
        if holder and holder != self.identity and not self._expired(spec):
            self._set_leader(None)
            return False
        return self._update(lease, attempt_started)

    def release(self) -> bool:
        """Give up the Lease if this candidate is its holder, so another can take it at once."""
        if not self.is_leader():
            return False

        # Fence first: once the release below lands, another replica may write at once.
        self._set_leader(None)
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self._request_timeout)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return False
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = self.wall_clock()
            self.api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=self._request_timeout)
        except (ApiException, urllib3.exceptions.HTTPError) as error:
            logger.warning("releasing Lease %s/%s failed: %s; the other replica takes over once the lease expires", self.namespace, self.name, error)
            return False
        logger.info("released Lease %s/%s as %s", self.namespace, self.name, self.identity)
        return True

    def run(self) -> None:
        """Try to acquire or renew every retry period until `stop()`, then release if requested."""
        logger.info("leader election on Lease %s/%s as %s", self.namespace, self.name, self.identity)
        while not self._stop.is_set():
            self.try_acquire_or_renew()
            self._stop.wait(self.timing.retry_period_seconds)
        if self._release_on_stop:
            self.release()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"leader-election-{self.identity}", daemon=True)
        thread.start()
        return thread

    def stop(self, *, release: bool = True) -> None:
        """End `run`; with `release`, the Lease is handed back so another replica takes over at once.

        Stop writing before releasing: after the release another replica may write at once.
        """
        self._release_on_stop = release
        self._stop.set()

    def _expired(self, spec: client.V1LeaseSpec) -> bool:
        duration = spec.lease_duration_seconds or self.timing.lease_duration_seconds
        return self.clock() - self._observed_at >= duration

    def _create(self, attempt_started: float) -> bool:
        now = self.wall_clock()
        lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=_whole_seconds(self.timing.lease_duration_seconds),
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            ),
        )
        try:
            created = self.api.create_namespaced_lease(self.namespace, lease, _request_timeout=self._request_timeout)
        except ApiException as error:
            if error.status == 409:
                return self._lost("another candidate created the Lease first")
            return self._failed(f"cannot create Lease {self.namespace}/{self.name}: HTTP {error.status} {error.reason}")
        except urllib3.exceptions.HTTPError as error:
            return self._failed(f"cannot create Lease {self.namespace}/{self.name}: {error}")
        return self._succeeded(created, attempt_started)

    def _update(self, lease: client.V1Lease, attempt_started: float) -> bool:
        spec = lease.spec or client.V1LeaseSpec()
        now = self.wall_clock()
        if spec.holder_identity != self.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = _whole_seconds(self.timing.lease_duration_seconds)
        spec.renew_time = now
        lease.spec = spec
        try:
            # The body carries the resourceVersion that was read, so a concurrent write
            # by another candidate makes this one fail with 409 Conflict.
            updated = self.api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=self._request_timeout)
        except ApiException as error:
            if error.status == 409:
                return self._lost("another candidate updated the Lease first")
            return self._failed(f"cannot update Lease {self.namespace}/{self.name}: HTTP {error.status} {error.reason}")
        except urllib3.exceptions.HTTPError as error:
            return self._failed(f"cannot update Lease {self.namespace}/{self.name}: {error}")
        return self._succeeded(updated, attempt_started)

    def _succeeded(self, lease: client.V1Lease, attempt_started: float) -> bool:
        self._observed_record = _record_of(lease.spec)
        self._observed_at = self.clock()
        self._set_leader(attempt_started)
        return True

    def _lost(self, reason: str) -> bool:
        logger.debug("Lease %s/%s: %s", self.namespace, self.name, reason)
        self._set_leader(None)
        return False

    def _failed(self, message: str) -> bool:
        # A failed request does not end leadership at once: is_leader() stays true until the
        # renew deadline, and the next retry may still renew in time.
        logger.warning("%s; retrying in %g s", message, self.timing.retry_period_seconds)
        self._notify_if_deadline_passed()
        return self.is_leader()

    def _set_leader(self, renewed_at: float | None) -> None:
        with self._lock:
            if renewed_at is not None:
                self._renewed_at = renewed_at
            else:
                self._renewed_at = None
        self._notify_if_deadline_passed()

    def _notify_if_deadline_passed(self) -> None:
        leading = self.is_leader()
        if leading and not self._was_leader:
            self._was_leader = True
            logger.info("became leader of Lease %s/%s as %s", self.namespace, self.name, self.identity)
            if self.on_started_leading is not None:
                self.on_started_leading()
        elif not leading and self._was_leader:
            self._was_leader = False
            logger.warning("lost leadership of Lease %s/%s as %s", self.namespace, self.name, self.identity)
            if self.on_stopped_leading is not None:
                self.on_stopped_leading()


def _record_of(spec: client.V1LeaseSpec | None) -> tuple:
    if spec is None:
        return ()
    return (spec.holder_identity, spec.lease_duration_seconds, spec.acquire_time, spec.renew_time, spec.lease_transitions)


def _whole_seconds(seconds: float) -> int:
    # The Lease field is an integer; rounding up never shortens the lease others must wait out.
    return max(1, int(-(-seconds // 1)))
