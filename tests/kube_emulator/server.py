"""HTTP front end: routes Kubernetes REST paths to ResourceApi, streams watches, logs requests, injects faults."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import discovery
from .api import ResourceApi
from .auth import AccessControl
from .errors import REASON_BY_CODE, ApiError, bad_request, method_not_allowed
from .resources import ResourceType
from .selectors import Selector
from .tables import to_table, wants_table
from .traffic import Fault, RequestRecord, Traffic

logger = logging.getLogger(__name__)

# Length of a watch without timeoutSeconds.
# kube-apiserver picks a random 30 to 60 minutes (from --min-request-timeout, 1800 s by default).
DEFAULT_WATCH_TIMEOUT_SECONDS = 1800.0
# How often a waiting watch checks for server shutdown and its own deadline.
WATCH_POLL_SECONDS = 0.2


def _not_found_path(path: str) -> ApiError:
    return ApiError(404, "NotFound", f"the server could not find the requested resource (path {path})",
                    details={"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]})


class _Route:
    """A parsed resource URL."""

    def __init__(self, resource_type: ResourceType, namespace: str | None, name: str | None,
                 subresource: str | None) -> None:
        self.resource_type = resource_type
        self.namespace = namespace
        self.name = name
        self.subresource = subresource

    @property
    def storage_namespace(self) -> str:
        return (self.namespace or "") if self.resource_type.namespaced else ""


class EmulatorHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers open connections, so `close()` can end keep-alive and watch threads."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, api: ResourceApi, access: AccessControl, traffic: Traffic) -> None:
        super().__init__(("127.0.0.1", 0), RequestHandler)
        self.api = api
        self.access = access
        self.traffic = traffic
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close(self) -> None:
        """Stop serving, end open watches and close every client connection."""
        self.stopping.set()
        with self.api.store.condition:
            self.api.store.condition.notify_all()
        self.shutdown()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EmulatorHTTPServer
    _record: RequestRecord | None = None

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip() or None
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = raw_body.decode("utf-8", "replace")
        self._record = RequestRecord(method=method, path=url.path, query=query, body=body, content_type=content_type,
                                     user_agent=self.headers.get("User-Agent"), status=0)
        try:
            fault = self.server.traffic.take_fault(method, url.path)
            if fault is not None and self._apply_fault(fault):
                return
            if isinstance(body, str):
                raise bad_request(f"invalid request body: not JSON (Content-Type {content_type!r})")
            self._route(method, url.path, query, body, content_type)
        except ApiError as error:
            logger.debug("%s %s -> %d %s: %s", method, url.path, error.code, error.reason, error.message)
            self._send_json(error.code, error.to_status(), headers=self._retry_after(error))
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("client closed the connection during %s %s", method, url.path)
        except Exception as error:  # noqa: BLE001 - any bug must reach the client as a 500, not a hang
            logger.exception("emulated API server failed on %s %s", method, self.path)
            self._send_json(500, ApiError(500, "InternalError", f"emulator error: {error!r}").to_status())
        finally:
            # A request that got no response (dropped, or the client went away) is logged with status 0.
            self._log_request(0)

    def _log_request(self, status: int) -> None:
        """Add the current request to the log, once.

        Callers log before the response goes out, so a client that has read a response finds its request logged.
        """
        if self._record is not None:
            self.server.traffic.record(dataclasses.replace(self._record, status=status))
            self._record = None

    def _apply_fault(self, fault: Fault) -> bool:
        """Delay the request, then drop it (return True), fail it (raise ApiError) or let it go on (return False)."""
        if fault.delay_seconds:
            self.server.stopping.wait(fault.delay_seconds)
        if fault.drop_connection:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return True
        if fault.status is None:
            return False
        reason = fault.reason or REASON_BY_CODE.get(fault.status, "InternalError")
        message = fault.message or f"injected fault: {fault.status} {reason}"
        error = ApiError(fault.status, reason, message)
        if fault.retry_after_seconds is not None:
            error.details = {"retryAfterSeconds": fault.retry_after_seconds}
        raise error

    @staticmethod
    def _retry_after(error: ApiError) -> dict[str, str]:
        seconds = (error.details or {}).get("retryAfterSeconds")
        return {"Retry-After": str(seconds)} if seconds is not None else {}

    def _route(self, method: str, path: str, query: dict[str, str], body: Any, content_type: str | None) -> int:
        registry = self.server.api.registry
        segments = [segment for segment in path.split("/") if segment]
        if method == "GET":
            document = self._discovery_document(path, segments)
            if document is not None:
                return self._send_json(200, document)
        if len(segments) >= 2 and segments[0] == "api":
            prefix, rest = f"/api/{segments[1]}", segments[2:]
        elif len(segments) >= 3 and segments[0] == "apis":
            prefix, rest = f"/apis/{segments[1]}/{segments[2]}", segments[3:]
        else:
            raise _not_found_path(path)

        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            candidate = registry.by_path(prefix, rest[2])
            if candidate is not None and candidate.namespaced:
                namespace, rest = rest[1], rest[2:]
        resource_type = registry.by_path(prefix, rest[0]) if rest else None
        if resource_type is None or len(rest) > 3:
            raise _not_found_path(path)
        route = _Route(resource_type, namespace, rest[1] if len(rest) > 1 else None,
                       rest[2] if len(rest) > 2 else None)
        if route.subresource not in (None, "status", "scale") or (
                resource_type.namespaced and route.name is not None and namespace is None):
            raise _not_found_path(path)
        return self._dispatch(method, route, query, body, content_type)

    def _discovery_document(self, path: str, segments: list[str]) -> dict[str, Any] | None:
        registry = self.server.api.registry
        if path.rstrip("/") == "/version":
            return discovery.SERVER_VERSION
        if segments == ["api"]:
            return discovery.api_versions(f"127.0.0.1:{self.server.server_address[1]}")
        if segments == ["apis"]:
            return discovery.api_group_list(registry)
        if segments == ["openapi", "v3"]:
            return discovery.openapi_v3_root(registry)
        if segments[:2] == ["openapi", "v3"]:
            return discovery.openapi_v3_group_version(registry, "/".join(segments[2:])) or self._raise_not_found(path)
        if segments and segments[0] == "openapi":
            raise _not_found_path(path)
        if len(segments) == 2 and segments[0] == "apis":
            return discovery.api_group(registry, segments[1]) or self._raise_not_found(path)
        if len(segments) == 2 and segments[0] == "api" or len(segments) == 3 and segments[0] == "apis":
            prefix = "/" + "/".join(segments)
            return discovery.api_resource_list(registry, prefix) or self._raise_not_found(path)
        return None

    @staticmethod
    def _raise_not_found(path: str) -> dict[str, Any]:
        raise _not_found_path(path)

    def _dispatch(self, method: str, route: _Route, query: dict[str, str], body: Any,
                  content_type: str | None) -> int:
        api = self.server.api
        resource_type = route.resource_type
        namespace = route.storage_namespace
        dry_run = query.get("dryRun") == "All"
        field_validation = query.get("fieldValidation") or "Warn"
        # A body without Content-Type is read as JSON, the first media type the real server supports.
        if method in ("POST", "PUT") and content_type not in (None, "application/json"):
            raise ApiError(415, "UnsupportedMediaType", f"unsupported request body media type {content_type!r}")
        if resource_type.create_only:
            if method != "POST" or route.name is not None:
                raise method_not_allowed(f"{resource_type.plural} only support create")
            if not isinstance(body, dict):
                raise bad_request(f"invalid {resource_type.kind} body: expected a JSON object")
            access = self.server.access
            if resource_type.kind == "TokenReview":
                review = access.review_token(body)
            else:
                review = access.review_access(body)
            return self._send_json(201, {"apiVersion": resource_type.api_version, "kind": resource_type.kind,
                                         **review})

        if route.name is None:
            if method == "GET":
                return self._list_or_watch(route, query)
            if method == "POST":
                if resource_type.namespaced and route.namespace is None:
                    raise method_not_allowed(f"create of {resource_type.plural} needs a namespace in the URL")
                created, warnings = api.create(resource_type, route.namespace or "", body, dry_run=dry_run,
                                               field_validation=field_validation)
                return self._send_json(201, created, warnings=warnings)
            if method == "DELETE":
                return self._delete_collection(route, query)
            raise method_not_allowed(f"{method} is not supported on a collection of {resource_type.plural}")

        if method == "GET":
            if route.subresource == "scale":
                return self._send_json(200, api.get_scale(resource_type, namespace, route.name))
            obj = api.get(resource_type, namespace, route.name)
            if route.subresource is None and wants_table(self.headers.get("Accept")):
                table = to_table(resource_type, [obj], obj["metadata"]["resourceVersion"],
                                 include_object=query.get("includeObject", "Metadata"))
                return self._send_json(200, table)
            return self._send_json(200, obj)
        if method == "PUT":
            if route.subresource == "scale":
                return self._send_json(200, api.update_scale(resource_type, namespace, route.name, body,
                                                             dry_run=dry_run))
            updated, warnings = api.update(resource_type, namespace, route.name, body, subresource=route.subresource,
                                           dry_run=dry_run, field_validation=field_validation)
            return self._send_json(200, updated, warnings=warnings)
        if method == "PATCH":
            if route.subresource == "scale":
                return self._send_json(200, api.patch_scale(resource_type, namespace, route.name, body,
                                                            content_type or "", dry_run=dry_run))
            patched, warnings = api.patch(resource_type, namespace, route.name, body, content_type or "",
                                          subresource=route.subresource, dry_run=dry_run,
                                          field_validation=field_validation)
            return self._send_json(200, patched, warnings=warnings)
        if method == "DELETE" and route.subresource is None:
            preconditions = (body or {}).get("preconditions") or {} if isinstance(body, dict) else {}
            deleted = api.delete(resource_type, namespace, route.name,
                                 precondition_version=preconditions.get("resourceVersion"), dry_run=dry_run)
            if resource_type.custom:
                return self._send_json(200, deleted)
            return self._send_json(200, _success_status(resource_type, deleted))
        raise method_not_allowed(f"{method} is not supported on {resource_type.plural}/{route.subresource}")

    def _list_or_watch(self, route: _Route, query: dict[str, str]) -> int:
        selector = Selector.parse(query.get("labelSelector"), query.get("fieldSelector"))
        if query.get("watch") in ("true", "1"):
            return self._watch(route, selector, query)
        # NOTE: limit and continue are ignored, so every list returns all matching items in one page.
        items, resource_version = self.server.api.list(route.resource_type, route.namespace, selector)
        if wants_table(self.headers.get("Accept")):
            return self._send_json(200, to_table(route.resource_type, items, str(resource_version),
                                                 include_object=query.get("includeObject", "Metadata")))
        document = {"kind": f"{route.resource_type.kind}List", "apiVersion": route.resource_type.api_version,
                    "metadata": {"resourceVersion": str(resource_version)}, "items": items}
        return self._send_json(200, document)

    def _delete_collection(self, route: _Route, query: dict[str, str]) -> int:
        selector = Selector.parse(query.get("labelSelector"), query.get("fieldSelector"))
        items, _ = self.server.api.list(route.resource_type, route.namespace, selector)
        for item in items:
            metadata = item["metadata"]
            self.server.api.delete(route.resource_type, metadata.get("namespace", ""), metadata["name"],
                                   dry_run=query.get("dryRun") == "All")
        return self._send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})

    def _watch(self, route: _Route, selector: Selector, query: dict[str, str]) -> int:
        """Stream watch events as chunked JSON lines until timeoutSeconds, server stop or client disconnect.

        NOTE: an object modified so that it stops matching the selector is skipped, where the real server
        sends DELETED.
        """
        store = self.server.api.store
        try:
            timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT_SECONDS)
            requested_version = int(query.get("resourceVersion") or 0)
        except ValueError:
            raise bad_request(f"invalid timeoutSeconds {query.get('timeoutSeconds')!r} or resourceVersion "
                              f"{query.get('resourceVersion')!r}: expected integers") from None
        as_table = wants_table(self.headers.get("Accept"))
        deadline = time.monotonic() + timeout

        with store.condition:
            if requested_version == 0:
                initial, last_version = self.server.api.list(route.resource_type, route.namespace, selector)
            else:
                initial, last_version = [], requested_version
                store.events_after(requested_version)  # raises 410 Expired before any header is sent

        self._log_request(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for obj in initial:
                self._send_event("ADDED", route.resource_type, obj, as_table)
            while not self.server.stopping.is_set() and time.monotonic() < deadline:
                with store.condition:
                    try:
                        events = store.events_after(last_version)
                    except ApiError as error:
                        self._send_chunk({"type": "ERROR", "object": error.to_status()})
                        break
                    if not events:
                        store.condition.wait(min(WATCH_POLL_SECONDS, max(deadline - time.monotonic(), 0)))
                        continue
                for event in events:
                    last_version = event.resource_version
                    if event.resource_type != route.resource_type:
                        continue
                    if route.namespace is not None and event.namespace != route.namespace:
                        continue
                    if selector.matches(event.object):
                        self._send_event(event.type, route.resource_type, event.object, as_table)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        self.close_connection = True
        return 200

    def _send_event(self, event_type: str, resource_type: ResourceType, obj: dict[str, Any], as_table: bool) -> None:
        payload = to_table(resource_type, [obj], None, include_object="Metadata") if as_table else obj
        self._send_chunk({"type": event_type, "object": payload})

    def _send_chunk(self, document: dict[str, Any]) -> None:
        data = json.dumps(document, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send_json(self, code: int, document: dict[str, Any], *, warnings: list[str] = (),
                   headers: dict[str, str] | None = None) -> int:
        data = json.dumps(document, separators=(",", ":")).encode()
        self._log_request(code)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for warning in warnings:
            self.send_header("Warning", f"299 - {json.dumps(warning)}")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        return code


def _success_status(resource_type: ResourceType, deleted: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": deleted["metadata"]["name"], "group": resource_type.group,
                        "kind": resource_type.plural, "uid": deleted["metadata"].get("uid")}}
