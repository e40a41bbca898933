"""Operational surface of the controller: Prometheus metrics, health probes and JSON logs.

`Telemetry` owns a prometheus_client registry that the controller updates every tick.
`serve_ops` serves it on `/metrics`, with `/healthz` (the process is alive) and `/readyz`
(a tick has succeeded). `JsonFormatter` writes one JSON object per log record.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from autoscaler.targets import TargetRef

if TYPE_CHECKING:
    from autoscaler.engine import Decision

logger = logging.getLogger(__name__)

_TICK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_QUERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Telemetry:
    """The controller's Prometheus metrics and readiness state.

    Ready means at least one tick has succeeded since start. With `stall_after_seconds`,
    `/healthz` fails once no tick (successful or not) has ended for that long, so the
    kubelet restarts a process whose loop hangs. Set it to several tick intervals.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        stall_after_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.stall_after_seconds = stall_after_seconds
        self.clock = clock
        self._started = clock()
        self._last_tick_end: float | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._target_labels: set[tuple[str, str]] = set()

        self.ticks = Counter("grove_autoscaler_ticks", "Controller ticks, by outcome (success or error).", ["outcome"], registry=self.registry)
        self.tick_duration = Histogram(
            "grove_autoscaler_tick_duration_seconds", "Duration of one controller tick.", buckets=_TICK_BUCKETS, registry=self.registry
        )
        self.query_duration = Histogram(
            "grove_autoscaler_query_duration_seconds",
            "Duration of one metric query, by signal.",
            ["signal"],
            buckets=_QUERY_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "grove_autoscaler_decisions",
            "Decisions made, by target, level and direction (up, down, hold, unknown).",
            ["target", "level", "direction"],
            registry=self.registry,
        )
        self.patches = Counter(
            "grove_autoscaler_scale_patches",
            "Writes of a /scale subresource, by target, level and outcome (success or error).",
            ["target", "level", "outcome"],
            registry=self.registry,
        )
        self.errors = Counter("grove_autoscaler_errors", "Errors caught by the controller, by stage.", ["stage"], registry=self.registry)
        self.desired_replicas = Gauge(
            "grove_autoscaler_desired_replicas", "Replicas the engine decided at the last tick.", ["target", "level"], registry=self.registry
        )
        self.current_replicas = Gauge(
            "grove_autoscaler_current_replicas", "Replicas read from /scale at the last tick.", ["target", "level"], registry=self.registry
        )
        self.ready_gauge = Gauge("grove_autoscaler_ready", "1 once a tick has succeeded, else 0.", registry=self.registry)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def healthy(self) -> tuple[bool, str]:
        """Return whether the loop is alive, with a message for the probe response."""
        if self.stall_after_seconds is None:
            return True, "ok"
        with self._lock:
            last = self._last_tick_end if self._last_tick_end is not None else self._started
        idle = self.clock() - last
        if idle > self.stall_after_seconds:
            return False, f"no tick has ended for {idle:.0f} s (limit {self.stall_after_seconds:g} s)"
        return True, "ok"

    def record_tick(self, *, duration_seconds: float, success: bool) -> None:
        """Count one finished tick; the first successful one makes the process ready."""
        self.ticks.labels(outcome="success" if success else "error").inc()
        self.tick_duration.observe(duration_seconds)
        with self._lock:
            self._last_tick_end = self.clock()
        if success and not self._ready.is_set():
            self._ready.set()
            self.ready_gauge.set(1)
            logger.info("ready: first tick succeeded after %.2f s", duration_seconds)

    def record_query(self, signal: str, duration_seconds: float) -> None:
        self.query_duration.labels(signal=signal).observe(duration_seconds)

    def record_error(self, stage: str) -> None:
        self.errors.labels(stage=stage).inc()

    def record_patch(self, target: str, *, success: bool) -> None:
        self.patches.labels(target=target, level=_level(target), outcome="success" if success else "error").inc()

    def publish(self, now: float, decisions: Sequence[Decision]) -> None:
        """Record one tick's decisions; targets absent from the tick lose their gauges.

        The signature matches the controller's decision sinks, so a Telemetry can be one.
        """
        seen: set[tuple[str, str]] = set()
        for decision in decisions:
            labels = (decision.target, _level(decision.target))
            seen.add(labels)
            self.decisions.labels(*labels, _direction(decision)).inc()
            _set_or_remove(self.desired_replicas, labels, decision.desired)
            _set_or_remove(self.current_replicas, labels, decision.current)

        with self._lock:
            removed_targets = self._target_labels - seen
            self._target_labels = seen
        for labels in removed_targets:
            _remove(self.desired_replicas, labels)
            _remove(self.current_replicas, labels)


def _level(target: str) -> str:
    try:
        return TargetRef.parse(target).kind.value
    except ValueError:
        return "unknown"


def _direction(decision: Decision) -> str:
    if decision.desired is None or decision.current is None:
        return "unknown"
    if decision.desired > decision.current:
        return "up"
    if decision.desired < decision.current:
        return "down"
    return "hold"


def _set_or_remove(gauge: Gauge, labels: tuple[str, str], value: int | None) -> None:
    # A missing value is removed rather than set to 0, so dashboards do not show a false zero.
    if value is None:
        _remove(gauge, labels)
    else:
        gauge.labels(*labels).set(value)


def _remove(gauge: Gauge, labels: tuple[str, str]) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        pass


class _OpsHandler(BaseHTTPRequestHandler):
    server: OpsServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        telemetry = self.server.telemetry
        if path == "/metrics":
            self._send(200, generate_latest(telemetry.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            healthy, message = telemetry.healthy()
            self._send(200 if healthy else 503, message.encode() + b"\n")
        elif path == "/readyz":
            if telemetry.ready:
                self._send(200, b"ok\n")
            else:
                self._send(503, b"not ready: no tick has succeeded yet\n")
        else:
            self._send(404, f"not found: {path}; paths: /metrics /healthz /readyz\n".encode())

    def _send(self, status: int, payload: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.client_address[0], format % args)


class OpsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        super().__init__(address, _OpsHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def serve_ops(telemetry: Telemetry, *, host: str = "0.0.0.0", port: int = 8080) -> tuple[OpsServer, threading.Thread]:
    """Serve /metrics, /healthz and /readyz over HTTP in a daemon thread (port 0 picks a free one).

    The default binds every interface because the kubelet probes and Prometheus scrapes the
    pod IP; tests pass 127.0.0.1. Stop it with `server.shutdown(); server.server_close()`.
    """
    server = OpsServer((host, port), telemetry)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="ops-http", daemon=True)
    thread.start()
    logger.info("serving %s/metrics, /healthz and /readyz", server.url)
    return server, thread


# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
_RECORD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object: time (UTC RFC 3339), level, logger, message.

    Fields passed through `extra=` are added as keys, exceptions as `exception`; values
    that JSON cannot encode are written as their `str()`.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
