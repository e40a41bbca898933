"""The external metrics adapter over HTTPS, with authentication and authorisation by the emulator.

Callers are real: `http.client` with a front-proxy client certificate, as the kube-aggregator
calls, `kubectl get --raw` with a bearer token or a client certificate, and the official
`kubernetes` client inside the Authenticator for TokenReview and SubjectAccessReview.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import pytest
import yaml
from cryptography import x509

from autoscaler.adapter import Authenticator, MetricStore, RequestHeaderConfig, serve_adapter
from autoscaler.adapter.server import AdapterServer
from autoscaler.adapter.tls import CertificateAuthority
from autoscaler.engine import Decision, EngineState, TargetSpec, decide
from metrics.sample import Sample
from policies.base import Desire, PolicyContext, PolicyParams, PolicyResult
from tests.conftest import require_binary

NAMESPACE = "llm"
GROUP_VERSION = "external.metrics.k8s.io/v1beta1"
DESIRED = "grove_autoscaler_desired_replicas"
METRICS_PATH = f"/apis/{GROUP_VERSION}/namespaces/{NAMESPACE}"
HPA_USER = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
NOW = 1_800_000_000.0


@dataclass
class Credentials:
    cert_file: str
    key_file: str


@dataclass
class Adapter:
    server: AdapterServer
    store: MetricStore
    serving_ca_file: str
    front_proxy: Credentials
    front_proxy_ca: CertificateAuthority
    client_ca: CertificateAuthority
    tmp_path: Path

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def credentials(self, authority: CertificateAuthority, common_name: str, *, groups: tuple[str, ...] = ()) -> Credentials:
        pair = authority.issue_client(common_name, organizations=groups)
        return Credentials(*pair.write(self.tmp_path, f"client-{common_name.replace(':', '-')}"))

    def get(self, path: str, *, cert: Credentials | None = None, headers: dict[str, str] | list[tuple[str, str]] | None = None) -> tuple[int, Any]:
        """GET `path` with certificate verification against the adapter's serving CA.

        `headers` as a list of pairs may repeat a header, as the aggregator does for groups.
        """
        context = ssl.create_default_context(cafile=self.serving_ca_file)
        if cert is not None:
            context.load_cert_chain(cert.cert_file, cert.key_file)
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=10)
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        try:
            connection.putrequest("GET", path)
            for name, value in pairs:
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            body = response.read().decode()
            if response.getheader("Content-Type") == "application/json":
                return response.status, json.loads(body)
            return response.status, body
        finally:
            connection.close()

    def get_as_aggregator(self, path: str, *, user: str = HPA_USER, groups: tuple[str, ...] = ("system:serviceaccounts",)) -> tuple[int, Any]:
        headers = [("X-Remote-User", user), *(("X-Remote-Group", group) for group in groups)]
        return self.get(path, cert=self.front_proxy, headers=headers)


@pytest.fixture
def adapter(kube_emulator, tmp_path: Path) -> Iterator[Adapter]:
    serving_ca = CertificateAuthority("adapter-serving-ca")
    serving_ca_file = tmp_path / "serving-ca.crt"
    serving_ca_file.write_bytes(serving_ca.cert_pem)
    cert_file, key_file = serving_ca.issue_server(("localhost", "127.0.0.1")).write(tmp_path, "serving")

    front_proxy_ca = CertificateAuthority("front-proxy-ca")
    front_proxy = Credentials(*front_proxy_ca.issue_client("front-proxy-client").write(tmp_path, "front-proxy-client"))
    client_ca = CertificateAuthority("kubernetes-ca")

    auth = Authenticator(
        api_client=kube_emulator.api_client(),
        requestheader=RequestHeaderConfig(front_proxy_ca.cert_pem, allowed_names=("front-proxy-client",)),
        client_ca_pem=client_ca.cert_pem,
    )
    store = MetricStore()
    server, thread = serve_adapter(store, host="127.0.0.1", port=0, cert_file=cert_file, key_file=key_file, auth=auth)
    kube_emulator.allow(user=HPA_USER, verbs=["get"], api_group="external.metrics.k8s.io", namespace=NAMESPACE)
    yield Adapter(server, store, str(serving_ca_file), front_proxy, front_proxy_ca, client_ca, tmp_path)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def publish(store: MetricStore, *decisions: Decision) -> None:
    store.publish(NOW, list(decisions))


def make_decision(name: str, desired: int | None, *, current: int = 2, samples=None, namespace: str = NAMESPACE) -> Decision:
    reason = "test decision" if desired is not None else "hold: live /scale could not be read"
    return Decision(NOW, f"{namespace}/podclique/{name}", "decode", current, desired, reason, samples=samples or {})


def assert_status(body: Any, code: int, reason: str) -> None:
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code
    assert body["reason"] == reason


# --- discovery and values -------------------------------------------------------------------


def test_discovery_lists_each_metric(adapter: Adapter) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 3, samples={"itl_p90": Sample.of(0.05)}))

    status, body = adapter.get_as_aggregator(f"/apis/{GROUP_VERSION}")
    assert status == 200
    assert body["kind"] == "APIResourceList"
    assert body["groupVersion"] == GROUP_VERSION
    assert [resource["name"] for resource in body["resources"]] == [DESIRED, "grove_autoscaler_signal_itl_p90"]
    for resource in body["resources"]:
        assert resource["namespaced"] is True
        assert resource["kind"] == "ExternalMetricValueList"
        assert resource["verbs"] == ["get"]


def test_discovery_group_documents(adapter: Adapter) -> None:
    status, groups = adapter.get_as_aggregator("/apis")
    assert status == 200
    assert groups["kind"] == "APIGroupList"
    assert [group["name"] for group in groups["groups"]] == ["external.metrics.k8s.io"]

    status, group = adapter.get_as_aggregator("/apis/external.metrics.k8s.io")
    assert status == 200
    assert group["preferredVersion"] == {"groupVersion": GROUP_VERSION, "version": "v1beta1"}


def test_desired_replicas_value_list(adapter: Adapter) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))

    status, body = adapter.get_as_aggregator(f"{METRICS_PATH}/{DESIRED}")
    assert status == 200
    assert body["kind"] == "ExternalMetricValueList"
    assert body["apiVersion"] == GROUP_VERSION
    [item] = body["items"]
    assert item["metricName"] == DESIRED
    assert item["value"] == "5"
    assert item["timestamp"] == "2027-01-15T08:00:00Z"
    assert item["metricLabels"] == {"grove_io_target_kind": "podclique", "grove_io_target_name": "pcs-0-decode", "grove_io_rule": "decode"}


def test_signal_value_in_milli_units(adapter: Adapter) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5, samples={"itl_p90": Sample.of(0.062)}))
    status, body = adapter.get_as_aggregator(f"{METRICS_PATH}/grove_autoscaler_signal_itl_p90")
    assert status == 200
    assert [item["value"] for item in body["items"]] == ["62m"]


def test_label_selector_filters_items(adapter: Adapter) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5), make_decision("pcs-0-prefill", 2))

    status, body = adapter.get_as_aggregator(f"{METRICS_PATH}/{DESIRED}?labelSelector=grove_io_target_name%3Dpcs-0-prefill")
    assert status == 200
    assert [item["value"] for item in body["items"]] == ["2"]

    status, body = adapter.get_as_aggregator(f"{METRICS_PATH}/{DESIRED}?labelSelector=grove_io_target_kind+in+%28podclique%29")
    assert status == 200
    assert sorted(item["metricLabels"]["grove_io_target_name"] for item in body["items"]) == ["pcs-0-decode", "pcs-0-prefill"]


def test_invalid_selector_bad_request(adapter: Adapter) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))
    status, body = adapter.get_as_aggregator(f"{METRICS_PATH}/{DESIRED}?labelSelector=a+in+%28b")
    assert status == 400
    assert_status(body, 400, "BadRequest")
    assert "invalid label selector" in body["message"]


def test_unknown_metric_not_found(adapter: Adapter) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))
    status, body = adapter.get_as_aggregator(f"{METRICS_PATH}/grove_autoscaler_signal_missing")
    assert status == 404
    assert_status(body, 404, "NotFound")
    assert "grove_autoscaler_signal_missing not found" in body["message"]


def test_no_matching_series_not_found(adapter: Adapter) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))
    status, body = adapter.get_as_aggregator(f"{METRICS_PATH}/{DESIRED}?labelSelector=grove_io_target_name%3Dother")
    assert status == 404
    assert_status(body, 404, "NotFound")


def test_unknown_sample_service_unavailable(adapter: Adapter) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5, samples={"itl_p90": Sample.unknown("Prometheus query timed out")}))
    status, body = adapter.get_as_aggregator(f"{METRICS_PATH}/grove_autoscaler_signal_itl_p90")
    assert status == 503
    assert_status(body, 503, "ServiceUnavailable")
    assert "Prometheus query timed out" in body["message"]


def test_before_first_tick_service_unavailable(adapter: Adapter) -> None:
    status, body = adapter.get_as_aggregator(f"{METRICS_PATH}/{DESIRED}")
    assert status == 503
    assert_status(body, 503, "ServiceUnavailable")


def test_healthz_without_credentials(adapter: Adapter) -> None:
    assert adapter.get("/healthz") == (200, "ok")


def test_write_method_not_allowed(adapter: Adapter) -> None:
    context = ssl.create_default_context(cafile=adapter.serving_ca_file)
    connection = http.client.HTTPSConnection("127.0.0.1", adapter.port, context=context, timeout=10)
    connection.request("POST", f"{METRICS_PATH}/{DESIRED}", body=b"{}")
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 405
    assert_status(body, 405, "MethodNotAllowed")


def test_repeated_failures_logged_once(adapter: Adapter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="autoscaler.adapter.server")
    for _ in range(3):
        status, _ = adapter.get_as_aggregator(f"{METRICS_PATH}/{DESIRED}")
        assert status == 503
    lines = [record.getMessage() for record in caplog.records if record.name == "autoscaler.adapter.server"]
    assert len(lines) == 1
    assert "-> 503" in lines[0]


def test_stalled_handshake_does_not_block_others(adapter: Adapter) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))
    with socket.create_connection(("127.0.0.1", adapter.port)):
        # This connection never starts TLS. The next caller is served all the same.
        status, body = adapter.get_as_aggregator(f"{METRICS_PATH}/{DESIRED}")
    assert status == 200
    assert [item["value"] for item in body["items"]] == ["5"]


def test_without_auth_serves_self_signed() -> None:
    store = MetricStore()
    publish(store, make_decision("pcs-0-decode", 2))
    server, thread = serve_adapter(store, host="127.0.0.1", port=0, cert_file=None, key_file=None, auth=None)
    try:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection("127.0.0.1", server.server_address[1], context=context, timeout=10)
        connection.request("GET", f"{METRICS_PATH}/{DESIRED}")
        response = connection.getresponse()
        body = json.loads(response.read())
        certificate = x509.load_der_x509_certificate(connection.sock.getpeercert(binary_form=True))
        connection.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert response.status == 200
    assert [item["value"] for item in body["items"]] == ["2"]
    assert certificate.issuer == certificate.subject


def test_serving_files_must_come_in_pairs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both or neither"):
        serve_adapter(MetricStore(), host="127.0.0.1", port=0, cert_file=str(tmp_path / "tls.crt"), key_file=None, auth=None)


# --- authentication and authorisation -------------------------------------------------------


def test_no_credentials_unauthorized(adapter: Adapter) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))
    status, body = adapter.get(f"{METRICS_PATH}/{DESIRED}")
    assert status == 401
    assert_status(body, 401, "Unauthorized")
    assert "no client certificate and no bearer token" in body["message"]


def test_discovery_needs_credentials(adapter: Adapter) -> None:
    status, body = adapter.get(f"/apis/{GROUP_VERSION}")
    assert status == 401
    assert_status(body, 401, "Unauthorized")


def test_front_proxy_without_user_header_unauthorized(adapter: Adapter) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))
    status, body = adapter.get(f"{METRICS_PATH}/{DESIRED}", cert=adapter.front_proxy)
    assert status == 401
    assert "without a user header" in body["message"]


def test_front_proxy_name_not_allowed_unauthorized(adapter: Adapter) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))
    intruder = adapter.credentials(adapter.front_proxy_ca, "someone-else")
    status, body = adapter.get(f"{METRICS_PATH}/{DESIRED}", cert=intruder, headers={"X-Remote-User": HPA_USER})
    assert status == 401
    assert "'someone-else' is not one of the allowed names" in body["message"]


def test_certificate_from_unknown_ca_rejected(adapter: Adapter) -> None:
    stranger = adapter.credentials(CertificateAuthority("unknown-ca"), "front-proxy-client")
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        adapter.get(f"{METRICS_PATH}/{DESIRED}", cert=stranger, headers={"X-Remote-User": HPA_USER})


def test_remote_headers_ignored_without_front_proxy_cert(adapter: Adapter, kube_emulator) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))
    kube_emulator.add_token("viewer-token", "viewer")
    headers = {"Authorization": "Bearer viewer-token", "X-Remote-User": HPA_USER}
    status, body = adapter.get(f"{METRICS_PATH}/{DESIRED}", headers=headers)
    assert status == 403
    assert 'User "viewer"' in body["message"]


def test_unauthorised_user_forbidden(adapter: Adapter, kube_emulator) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))
    status, body = adapter.get_as_aggregator(f"{METRICS_PATH}/{DESIRED}", user="jane", groups=("developers", "system:authenticated"))
    assert status == 403
    assert_status(body, 403, "Forbidden")
    assert 'User "jane" cannot get resource "grove_autoscaler_desired_replicas"' in body["message"]

    [review] = [record.body for record in kube_emulator.requests_matching("POST", "subjectaccessreviews")]
    assert review["spec"]["user"] == "jane"
    assert review["spec"]["groups"] == ["developers", "system:authenticated"]
    assert review["spec"]["resourceAttributes"] == {
        "group": "external.metrics.k8s.io",
        "version": "v1beta1",
        "resource": DESIRED,
        "namespace": NAMESPACE,
        "verb": "get",
    }


def test_extra_headers_reach_access_review(adapter: Adapter, kube_emulator) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))
    headers = [
        ("X-Remote-User", HPA_USER),
        ("X-Remote-Extra-Scopes", "metrics"),
        ("X-Remote-Extra-Scopes", "read"),
        ("X-Remote-Extra-Example.com%2fProject", "llm"),
    ]
    status, _ = adapter.get(f"{METRICS_PATH}/{DESIRED}", cert=adapter.front_proxy, headers=headers)
    assert status == 200
    [review] = [record.body for record in kube_emulator.requests_matching("POST", "subjectaccessreviews")]
    assert review["spec"]["extra"] == {"scopes": ["metrics", "read"], "example.com/project": ["llm"]}


def test_authorisation_per_namespace(adapter: Adapter) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5, namespace="other"))
    status, body = adapter.get_as_aggregator(f"/apis/{GROUP_VERSION}/namespaces/other/{DESIRED}")
    assert status == 403
    assert 'in the namespace "other"' in body["message"]


def test_bearer_token_through_token_review(adapter: Adapter, kube_emulator) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))
    kube_emulator.add_token("reader-token", "reader", ["readers"])
    kube_emulator.allow(group="readers", verbs=["get"], api_group="external.metrics.k8s.io", resources=[DESIRED], namespace=NAMESPACE)

    status, body = adapter.get(f"{METRICS_PATH}/{DESIRED}", headers={"Authorization": "Bearer reader-token"})
    assert status == 200
    assert [item["value"] for item in body["items"]] == ["5"]

    [review] = [record.body for record in kube_emulator.requests_matching("POST", "tokenreviews")]
    assert review["spec"]["token"] == "reader-token"


def test_invalid_token_unauthorized(adapter: Adapter) -> None:
    status, body = adapter.get(f"{METRICS_PATH}/{DESIRED}", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    assert "invalid bearer token" in body["message"]


def test_reviews_cached_between_requests(adapter: Adapter, kube_emulator) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))
    kube_emulator.add_token("reader-token", "reader")
    kube_emulator.allow(user="reader", verbs=["get"], api_group="external.metrics.k8s.io", namespace=NAMESPACE)

    for _ in range(3):
        status, _ = adapter.get(f"{METRICS_PATH}/{DESIRED}", headers={"Authorization": "Bearer reader-token"})
        assert status == 200
    assert len(kube_emulator.requests_matching("POST", "tokenreviews")) == 1
    assert len(kube_emulator.requests_matching("POST", "subjectaccessreviews")) == 1


def test_client_certificate_user_from_common_name(adapter: Adapter, kube_emulator) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))
    kube_emulator.allow(group="metric-readers", verbs=["get"], api_group="external.metrics.k8s.io", namespace=NAMESPACE)
    cert = adapter.credentials(adapter.client_ca, "alice", groups=("metric-readers",))

    status, body = adapter.get(f"{METRICS_PATH}/{DESIRED}", cert=cert)
    assert status == 200
    [review] = [record.body for record in kube_emulator.requests_matching("POST", "subjectaccessreviews")]
    assert review["spec"]["user"] == "alice"
    assert review["spec"]["groups"] == ["metric-readers"]


def test_failed_access_review_internal_error(adapter: Adapter, kube_emulator) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 5))
    kube_emulator.inject_fault(method="POST", path_regex="subjectaccessreviews", status=500, count=1)

    status, body = adapter.get_as_aggregator(f"{METRICS_PATH}/{DESIRED}")
    assert status == 500
    assert_status(body, 500, "InternalError")

    # The failure is not cached, so the next request makes a new review and succeeds.
    status, body = adapter.get_as_aggregator(f"{METRICS_PATH}/{DESIRED}")
    assert status == 200


def test_failed_token_review_unauthorized(adapter: Adapter, kube_emulator) -> None:
    kube_emulator.add_token("reader-token", "reader")
    kube_emulator.inject_fault(method="POST", path_regex="tokenreviews", status=503, count=1)
    status, body = adapter.get(f"{METRICS_PATH}/{DESIRED}", headers={"Authorization": "Bearer reader-token"})
    assert status == 401
    assert "the TokenReview of the bearer token failed: HTTP 503" in body["message"]


def test_requestheader_from_configmap(kube_emulator, tmp_path: Path) -> None:
    front_proxy_ca = CertificateAuthority("front-proxy-ca")
    kube_emulator.create(
        "configmaps",
        {
            "metadata": {"name": "extension-apiserver-authentication"},
            "data": {
                "requestheader-client-ca-file": front_proxy_ca.cert_pem.decode(),
                "requestheader-allowed-names": '["aggregator"]',
                "requestheader-username-headers": '["X-Custom-User"]',
                "requestheader-group-headers": '["X-Custom-Group"]',
                "requestheader-extra-headers-prefix": '["X-Custom-Extra-"]',
            },
        },
        namespace="kube-system",
    )
    kube_emulator.allow(user="hpa", verbs=["get"], api_group="external.metrics.k8s.io", namespace=NAMESPACE)
    auth = Authenticator.from_cluster(kube_emulator.api_client())
    assert auth.requestheader is not None
    assert auth.requestheader.allowed_names == ("aggregator",)

    store = MetricStore()
    publish(store, make_decision("pcs-0-decode", 7))
    server, thread = serve_adapter(store, host="127.0.0.1", port=0, cert_file=None, key_file=None, auth=auth)
    try:
        cert_file, key_file = front_proxy_ca.issue_client("aggregator").write(tmp_path, "aggregator")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(cert_file, key_file)
        connection = http.client.HTTPSConnection("127.0.0.1", server.server_address[1], context=context, timeout=10)
        connection.request("GET", f"{METRICS_PATH}/{DESIRED}", headers={"X-Custom-User": "hpa", "X-Custom-Group": "system:authenticated"})
        response = connection.getresponse()
        body = json.loads(response.read())
        connection.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    assert response.status == 200
    assert [item["value"] for item in body["items"]] == ["7"]


def test_missing_configmap_explained(kube_emulator) -> None:
    with pytest.raises(ValueError, match="HTTP 404.*--requestheader-client-ca-file"):
        Authenticator.from_cluster(kube_emulator.api_client())


def test_missing_configmap_with_ca_file(kube_emulator, tmp_path: Path) -> None:
    ca_file = tmp_path / "front-proxy-ca.crt"
    ca_file.write_bytes(CertificateAuthority("front-proxy-ca").cert_pem)
    auth = Authenticator.from_cluster(kube_emulator.api_client(), requestheader_client_ca_file=str(ca_file))
    assert auth.requestheader is not None
    assert auth.requestheader.client_ca_pem == ca_file.read_bytes()
    assert auth.requestheader.username_headers == ("X-Remote-User",)


def test_configmap_invalid_list_rejected(kube_emulator) -> None:
    kube_emulator.create(
        "configmaps",
        {
            "metadata": {"name": "extension-apiserver-authentication"},
            "data": {
                "requestheader-client-ca-file": CertificateAuthority("ca").cert_pem.decode(),
                "requestheader-allowed-names": "front-proxy-client",
            },
        },
        namespace="kube-system",
    )
    with pytest.raises(ValueError, match="requestheader-allowed-names: invalid JSON array"):
        Authenticator.from_cluster(kube_emulator.api_client())


# --- kubectl --------------------------------------------------------------------------------


def write_kubeconfig(adapter: Adapter, user: dict[str, str]) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "adapter",
                "cluster": {
                    "server": f"https://127.0.0.1:{adapter.port}",
                    "certificate-authority-data": base64.b64encode(Path(adapter.serving_ca_file).read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": "caller", "user": user}],
        "contexts": [{"name": "adapter", "context": {"cluster": "adapter", "user": "caller"}}],
        "current-context": "adapter",
    }
    path = adapter.tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def kubectl_get_raw(adapter: Adapter, kubeconfig: Path, path: str) -> subprocess.CompletedProcess[str]:
    kubectl = require_binary("kubectl")
    return subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), "--cache-dir", str(adapter.tmp_path / "kube-cache"), "get", "--raw", path],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_kubectl_get_raw_with_token(adapter: Adapter, kube_emulator) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 4))
    kube_emulator.add_token("kubectl-token", "operator", ["sre"])
    kube_emulator.allow(group="sre", verbs=["get"], api_group="external.metrics.k8s.io", namespace=NAMESPACE)
    kubeconfig = write_kubeconfig(adapter, {"token": "kubectl-token"})

    result = kubectl_get_raw(adapter, kubeconfig, f"{METRICS_PATH}/{DESIRED}")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["kind"] == "ExternalMetricValueList"
    assert [item["value"] for item in body["items"]] == ["4"]


def test_kubectl_get_raw_with_client_certificate(adapter: Adapter, kube_emulator) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 4))
    kube_emulator.allow(user="bob", verbs=["get"], api_group="external.metrics.k8s.io", namespace=NAMESPACE)
    cert = adapter.credentials(adapter.client_ca, "bob")
    user = {
        "client-certificate-data": base64.b64encode(Path(cert.cert_file).read_bytes()).decode(),
        "client-key-data": base64.b64encode(Path(cert.key_file).read_bytes()).decode(),
    }
    kubeconfig = write_kubeconfig(adapter, user)

    result = kubectl_get_raw(adapter, kubeconfig, f"{METRICS_PATH}/{DESIRED}")
    assert result.returncode == 0, result.stderr
    assert [item["value"] for item in json.loads(result.stdout)["items"]] == ["4"]


def test_kubectl_forbidden_without_permission(adapter: Adapter, kube_emulator) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", 4))
    kube_emulator.add_token("kubectl-token", "nobody")
    kubeconfig = write_kubeconfig(adapter, {"token": "kubectl-token"})

    result = kubectl_get_raw(adapter, kubeconfig, f"{METRICS_PATH}/{DESIRED}")
    assert result.returncode != 0
    assert "Forbidden" in result.stderr
    assert 'User "nobody"' in result.stderr


def test_kubectl_unknown_value_service_unavailable(adapter: Adapter, kube_emulator) -> None:
    publish(adapter.store, make_decision("pcs-0-decode", None))
    kube_emulator.add_token("kubectl-token", "operator", ["sre"])
    kube_emulator.allow(group="sre", verbs=["get"], api_group="external.metrics.k8s.io", namespace=NAMESPACE)
    kubeconfig = write_kubeconfig(adapter, {"token": "kubectl-token"})

    result = kubectl_get_raw(adapter, kubeconfig, f"{METRICS_PATH}/{DESIRED}")
    assert result.returncode != 0
    assert "Error from server (ServiceUnavailable)" in result.stderr
    assert "unknown for 1 of 1 selected targets: llm/podclique/pcs-0-decode: hold: live /scale could not be read" in result.stderr


# --- the HPA's arithmetic lands on the engine's decision ------------------------------------


def parse_quantity_milli(text: str) -> int:
    """Return a quantity string in milli units, as the HPA reads external metric values."""
    if text.endswith("m"):
        return int(text[:-1])
    return int(text) * 1000


def hpa_average_value_replicas(values: list[str], *, target_average_value: str, current_replicas: int, tolerance: float = 0.1) -> int:
    """Return the replicas the HPA computes for an External metric with target type AverageValue."""
    usage = sum(parse_quantity_milli(value) for value in values)
    target = parse_quantity_milli(target_average_value)
    usage_ratio = usage / (target * current_replicas)
    if abs(1.0 - usage_ratio) <= tolerance:
        return current_replicas
    return math.ceil(usage / target)


class FixedDesirePolicy:
    """A policy that returns the replica count stored for its target, which is enough to drive the engine."""

    name: ClassVar[str] = "fixed"
    Params: ClassVar[type[PolicyParams]] = PolicyParams

    def __init__(self, desires: dict[str, int]) -> None:
        self.desires = desires

    def signals(self) -> list[str]:
        return []

    def evaluate(self, context: PolicyContext) -> PolicyResult:
        return PolicyResult(Desire.scale_to(self.desires[context.target], "fixed for the test"))


# (name, live replicas, policy desire). The engine applies bounds 1..20 and its default behavior.
HPA_CASES = [
    ("scale up 2 to 5", 2, 5),
    ("scale down 8 to 3", 8, 3),
    ("scale up 1 to 20", 1, 20),
    ("clamped to max", 4, 40),
    ("clamped to min", 4, 0),
    ("hold", 6, 6),
    ("one step up from 3", 3, 4),
]


@pytest.mark.parametrize(("current", "wanted"), [case[1:] for case in HPA_CASES], ids=[case[0] for case in HPA_CASES])
def test_hpa_average_value_reproduces_decision(adapter: Adapter, current: int, wanted: int) -> None:
    target = f"{NAMESPACE}/podclique/pcs-0-decode"
    policy = FixedDesirePolicy({target: wanted})
    spec = TargetSpec(target=target, rule="decode", policies=(policy,), min_replicas=1, max_replicas=20)
    decisions, _ = decide(now=NOW, specs=[spec], observations={target: {}}, live={target: current}, state=EngineState())
    [decision] = decisions
    assert decision.desired is not None
    adapter.store.publish(NOW, decisions)

    status, body = adapter.get_as_aggregator(f"{METRICS_PATH}/{DESIRED}?labelSelector=grove_io_target_name%3Dpcs-0-decode")
    assert status == 200
    values = [item["value"] for item in body["items"]]
    assert len(values) == 1

    hpa_desired = hpa_average_value_replicas(values, target_average_value="1", current_replicas=current)
    assert hpa_desired == decision.desired


def test_hpa_tolerance_hides_small_changes() -> None:
    # The HPA ignores a change within its tolerance (10 % by default), so a decision of 21
    # on 20 live replicas is not applied. This limits the AverageValue pattern.
    assert hpa_average_value_replicas(["21"], target_average_value="1", current_replicas=20) == 20
    assert hpa_average_value_replicas(["23"], target_average_value="1", current_replicas=20) == 23
