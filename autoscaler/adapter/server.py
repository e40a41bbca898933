"""HTTPS server for `external.metrics.k8s.io/v1beta1`, read by the HPA through the kube-aggregator.

Paths:
- `/apis`, `/apis/external.metrics.k8s.io`, `/apis/external.metrics.k8s.io/v1beta1`:
  discovery, for any authenticated caller;
- `/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}?labelSelector=...`:
  an ExternalMetricValueList, after authentication and a SubjectAccessReview;
- `/healthz`, `/livez`, `/readyz`: "ok" without authentication, for kubelet probes.

Errors are metav1.Status objects: 400 invalid selector, 401 unauthenticated, 403 forbidden,
404 unknown metric or no matching series, 503 value unknown or stale, 500 authorisation
failed. Values come from a MetricStore only, so a request never reaches Prometheus.
"""

from __future__ import annotations

import datetime
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

from autoscaler.adapter.auth import API_GROUP, API_VERSION, Authenticator, AuthorizationFailed, Forbidden, Unauthenticated, UserInfo
from autoscaler.adapter.selector import SelectorError, parse_selector
from autoscaler.adapter.store import MetricNotFound, MetricStore, MetricUnavailable, Series
from autoscaler.adapter.tls import DEFAULT_HOSTS, server_context

logger = logging.getLogger(__name__)

GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"
HANDSHAKE_TIMEOUT_SECONDS = 10.0
# Idle keep-alive connections are closed after this long; the HPA reconnects as needed.
IDLE_TIMEOUT_SECONDS = 60.0
MAX_DISCARDED_BODY_BYTES = 1 << 20
# An HPA polls every 15 s by default; one log line per minute per failing path is enough.
FAILURE_LOG_INTERVAL_SECONDS = 60.0

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    500: "InternalError",
    503: "ServiceUnavailable",
}


class AdapterServer(ThreadingHTTPServer):
    """A threading HTTP server that runs each TLS handshake in the connection's own thread.

    Wrapping the listening socket would run handshakes in the accept loop, where one slow
    client stalls every other caller.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, store: MetricStore, auth: Authenticator | None, ssl_context: ssl.SSLContext) -> None:
        self.store = store
        self.auth = auth
        self.ssl_context = ssl_context
        self._logged: dict[tuple[str, int, str], tuple[float | None, int]] = {}
        self._log_lock = threading.Lock()
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"https://{host}:{port}"

    def log_failure(self, path: str, code: int, message: str) -> None:
        """Log a 5xx response once per path and message per minute, with the count of repeats."""
        key = (path, code, message)
        now = time.monotonic()
        with self._log_lock:
            last, repeats = self._logged.get(key, (None, 0))
            if last is not None and now - last < FAILURE_LOG_INTERVAL_SECONDS:
                self._logged[key] = (last, repeats + 1)
                return
            if len(self._logged) > 1000:
                self._logged.clear()
            self._logged[key] = (now, 0)
        suffix = f" ({repeats} more times since the last log line)" if repeats else ""
        logger.warning("GET %s -> %d: %s%s", path, code, message, suffix)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Headers and body go out as separate TLS records. Without TCP_NODELAY, Nagle's
        # algorithm delays the body until the client's delayed ACK, about 40 ms per response.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
        try:
            connection = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            logger.debug("TLS handshake with %s failed: %s", client_address[0], error)
            return
        try:
            connection.settimeout(IDLE_TIMEOUT_SECONDS)
            self.RequestHandlerClass(connection, client_address, self)
        finally:
            connection.close()


def serve_adapter(
    store: MetricStore,
    *,
    host: str,
    port: int,
    cert_file: str | None,
    key_file: str | None,
    auth: Authenticator | None,
    hosts: Sequence[str] = DEFAULT_HOSTS,
) -> tuple[AdapterServer, threading.Thread]:
    """Start the adapter on `host:port` (port 0 picks a free one) in a daemon thread.

    Without `cert_file`/`key_file` a self-signed certificate for `hosts` is used. With
    `auth` None every request is served without authentication or authorisation, which is
    only safe on a loopback address. Stop it with `server.shutdown(); server.server_close()`.
    """
    context = server_context(
        cert_file=cert_file,
        key_file=key_file,
        client_ca_pem=auth.trusted_ca_pem() if auth is not None else None,
        hosts=hosts,
    )
    server = AdapterServer((host, port), store=store, auth=auth, ssl_context=context)
    if auth is None:
        logger.warning("external metrics adapter runs without authentication; every caller may read every metric")
    # A short poll interval makes shutdown() return quickly; it costs one select() per 50 ms.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="external-metrics-adapter", daemon=True)
    thread.start()
    logger.info("external metrics adapter serving %s/apis/%s", server.url, GROUP_VERSION)
    return server, thread


def status_body(code: int, message: str) -> dict[str, Any]:
    """Return a metav1.Status failure object."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _REASONS.get(code, HTTPStatus(code).phrase.replace(" ", "")),
        "code": code,
    }


def value_list(metric: str, items: Sequence[Series]) -> dict[str, Any]:
    """Return an ExternalMetricValueList of `items`."""
    return {
        "kind": "ExternalMetricValueList",
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": [
            {
                "metricName": metric,
                "metricLabels": dict(item.labels),
                "timestamp": _rfc3339(item.time),
                "value": item.value,
            }
            for item in items
        ],
    }


def _rfc3339(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class _HttpError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    server: AdapterServer
    protocol_version = "HTTP/1.1"
    server_version = "grove-autoscaler-adapter"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        try:
            status, body = self._route(path, urllib.parse.parse_qs(url.query))
        except _HttpError as error:
            if error.code >= 500:
                self.server.log_failure(path, error.code, error.message)
            status, body = error.code, status_body(error.code, error.message)
        self._send_json(status, body)

    def _not_allowed(self) -> None:
        self._discard_body()
        self._send_json(405, status_body(405, f"method {self.command} is not supported; this API is read-only"))

    do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed

    def _discard_body(self) -> None:
        # Closing a socket with unread data makes TCP reset the connection before the client
        # reads the response. So a small body is read and dropped, and a larger one ends the connection.
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if 0 <= length <= MAX_DISCARDED_BODY_BYTES:
            self.rfile.read(length)
        else:
            self.close_connection = True

    def _route(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if path in ("/healthz", "/livez", "/readyz"):
            return 200, "ok"

        user = self._authenticate()
        if path == "/apis":
            return 200, self._group_list()
        if path == f"/apis/{API_GROUP}":
            return 200, self._group()
        if path == f"/apis/{GROUP_VERSION}":
            return 200, self._resource_list()

        parts = path.split("/")
        # ["", "apis", group, version, "namespaces", namespace, metric]
        if len(parts) == 7 and path.startswith(f"/apis/{GROUP_VERSION}/namespaces/"):
            namespace, metric = parts[5], parts[6]
            return 200, self._metric_values(user, namespace, metric, query)
        raise _HttpError(404, f"the server could not find the requested resource: {path}")

    def _authenticate(self) -> UserInfo | None:
        auth = self.server.auth
        if auth is None:
            return None
        certificate = self.connection.getpeercert(binary_form=True) if isinstance(self.connection, ssl.SSLSocket) else None
        try:
            return auth.authenticate(self.headers, certificate)
        except Unauthenticated as error:
            logger.info("unauthenticated request from %s for %s: %s", self.client_address[0], self.path, error)
            raise _HttpError(401, f"Unauthorized: {error}") from None

    def _metric_values(self, user: UserInfo | None, namespace: str, metric: str, query: dict[str, list[str]]) -> dict[str, Any]:
        selectors = query.get("labelSelector", [])
        try:
            selector = parse_selector(selectors[-1] if selectors else None)
        except SelectorError as error:
            raise _HttpError(400, str(error)) from None

        auth = self.server.auth
        if auth is not None and user is not None:
            try:
                auth.authorize(user, namespace=namespace, metric=metric)
            except Forbidden as error:
                raise _HttpError(403, str(error)) from None
            except AuthorizationFailed as error:
                raise _HttpError(500, str(error)) from None

        try:
            items = self.server.store.query(metric, namespace, selector)
        except MetricNotFound as error:
            raise _HttpError(404, str(error)) from None
        except MetricUnavailable as error:
            raise _HttpError(503, str(error)) from None
        return value_list(metric, items)

    def _group_list(self) -> dict[str, Any]:
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group()]}

    def _group(self) -> dict[str, Any]:
        version = {"groupVersion": GROUP_VERSION, "version": API_VERSION}
        return {"kind": "APIGroup", "apiVersion": "v1", "name": API_GROUP, "versions": [version], "preferredVersion": version}

    def _resource_list(self) -> dict[str, Any]:
        resources = [
            {"name": name, "singularName": "", "namespaced": True, "kind": "ExternalMetricValueList", "verbs": ["get"]}
            for name in self.server.store.metric_names()
        ]
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION, "resources": resources}

    def _send_json(self, status: int, body: Any) -> None:
        if isinstance(body, str):
            payload, content_type = body.encode("utf-8"), "text/plain; charset=utf-8"
        else:
            payload, content_type = json.dumps(body, separators=(",", ":")).encode("utf-8"), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-cache, private")
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError, socket.timeout) as error:
            logger.debug("client %s went away: %s", self.client_address[0], error)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.client_address[0], format % args)
