"""PrometheusSource against the real prometheus binary, fed with backfilled data of known values."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.config import CustomSignal, MetricsConfig
from metrics.catalog import SignalCatalog
from metrics.prometheus import PrometheusSource
from metrics.promql import union_matchers
from metrics.sample import Sample, SampleKind, SignalRequest
from tests.fixtures.prometheus import T0, Backfill, free_port

pytestmark = pytest.mark.prometheus

NOW = T0 + 300  # inside the backfilled span [T0, T0 + 600]

LLM_A = {"namespace": "llm", "dynamo_namespace": "llm-a"}
LLM_IDLE = {"namespace": "llm", "dynamo_namespace": "llm-idle"}
ODD = {"namespace": "llm", "dynamo_namespace": 'we"ird\\name.x'}
MANY = [{"namespace": "many", "dynamo_namespace": f"many-{index}"} for index in range(50)]

# TTFT observations: 55 % at 0.1 s, 30 % at 0.4 s, 15 % at 0.8 s, so p50 is 0.1, p75 0.4, p90 0.8.
# No quantile asked for sits on a cumulative share, where rounding would pick either neighbour.
TTFT = {0.1: 0.55, 0.4: 0.3, 0.8: 0.15}


def _backfill() -> Backfill:
    data = Backfill()
    data.dynamo_frontend(
        LLM_A, request_rate=10, ttft_seconds=TTFT, itl_seconds=0.025, isl_tokens=3000, osl_tokens=200, queued=3, inflight=7
    )
    data.dynamo_frontend(LLM_IDLE, request_rate=0, queued=0, inflight=0)
    data.steady_gauge("dynamo_frontend_queued_requests", ODD, value=4)
    data.steady_gauge("dynamo_frontend_queued_requests", {"namespace": "llm", "dynamo_namespace": "weXrd"}, value=99)
    data.steady_gauge("dynamo_frontend_queued_requests", {"namespace": "dots", "dynamo_namespace": "a.b"}, value=1)
    data.steady_gauge("dynamo_frontend_queued_requests", {"namespace": "dots", "dynamo_namespace": "aXb"}, value=2)
    for pod, usage in (("worker-0", 0.2), ("worker-1", 0.6)):
        data.steady_gauge("dynamo_component_kvstats_gpu_cache_usage_percent", {**LLM_A, "pod": pod}, value=usage)
    for index, labels in enumerate(MANY):
        data.steady_gauge("dynamo_frontend_queued_requests", labels, value=index)
    vllm = {"namespace": "llm", "model_name": "m1"}
    data.vllm_engine({**vllm, "pod": "p1"}, kv_cache_usage=0.3, waiting=2, running=5)
    data.vllm_engine({**vllm, "pod": "p2"}, kv_cache_usage=0.5, waiting=1, running=4)
    return data


@pytest.fixture(scope="module")
def server(module_prometheus_server):
    return module_prometheus_server(_backfill())


def _source(url: str, preset: str = "dynamo", **options) -> PrometheusSource:
    custom = options.pop("custom", None)
    return PrometheusSource(url=url, catalog=SignalCatalog(preset=preset, window_seconds=60, custom=custom), **options)


def _one(source: PrometheusSource, signal: str, labels: dict[str, str], now: float = NOW) -> Sample:
    return source.fetch([SignalRequest("t", signal, labels)], now=now)["t"][signal]


# --- query shapes with known values ----------------------------------------------------------


@pytest.mark.parametrize(
    ("signal", "expected"),
    [
        ("ttft_p50", 0.1),
        ("ttft_p75", 0.4),
        ("ttft_p90", 0.8),
        ("ttft_p99", 0.8),
        ("ttft_mean", 0.55 * 0.1 + 0.3 * 0.4 + 0.15 * 0.8),
        ("itl_p90", 0.025),
        ("itl_mean", 0.025),
        ("isl_mean", 3000),
        ("osl_mean", 200),
        ("request_rate", 10),
        ("decode_throughput", 2000),
        ("kv_cache_usage", 0.4),
        ("kv_cache_usage_max", 0.6),
        ("requests_waiting", 3),
        ("requests_inflight", 7),
    ],
)
def test_dynamo_signal_value(server, signal, expected):
    sample = _one(_source(server.url), signal, LLM_A)
    assert sample.kind is SampleKind.VALUE, sample
    assert sample.value == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize(
    ("signal", "expected"),
    [
        ("kv_cache_usage", 0.4),
        ("kv_cache_usage_max", 0.5),
        ("requests_waiting", 3),
        ("requests_running", 9),
        ("requests_inflight", 12),
    ],
)
def test_vllm_gauge_value(server, signal, expected):
    sample = _one(_source(server.url, preset="vllm"), signal, {"namespace": "llm", "model_name": "m1"})
    assert sample.kind is SampleKind.VALUE, sample
    assert sample.value == pytest.approx(expected)


@pytest.mark.parametrize("signal", ["ttft_p90", "ttft_mean", "itl_p99", "isl_mean"])
def test_zero_traffic_is_idle(server, signal):
    sample = _one(_source(server.url), signal, LLM_IDLE)
    assert sample.kind is SampleKind.IDLE, sample


def test_zero_traffic_request_rate_is_zero(server):
    sample = _one(_source(server.url), "request_rate", LLM_IDLE)
    assert sample.kind is SampleKind.VALUE
    assert sample.value == 0


@pytest.mark.parametrize("signal", ["ttft_p90", "ttft_mean", "request_rate", "kv_cache_usage", "requests_waiting"])
def test_no_series_is_unknown(server, signal):
    labels = {"namespace": "llm", "dynamo_namespace": "llm-missing"}
    sample = _one(_source(server.url), signal, labels)
    assert sample.kind is SampleKind.UNKNOWN
    assert 'no series for {dynamo_namespace="llm-missing", namespace="llm"}' in sample.reason


@pytest.mark.parametrize(
    "labels",
    [
        {"namespace": "LLM", "dynamo_namespace": "llm-a"},
        {"namespace": "llm", "dynamo_namespace": "llm_a"},
        {"namespace": "llm", "dynamo_component": "llm-a"},
    ],
    ids=["namespace-case", "underscore", "label-name"],
)
def test_label_mismatch_is_unknown(server, labels):
    source = _source(server.url)
    for signal in ("ttft_p90", "ttft_mean", "request_rate", "requests_waiting"):
        sample = _one(source, signal, labels)
        assert sample.kind is SampleKind.UNKNOWN, f"{signal}: {sample}"
        assert sample.value is None


def test_invalid_label_name_is_unknown(server):
    sample = _one(_source(server.url), "requests_waiting", {"dynamo-namespace": "llm-a"})
    assert sample.kind is SampleKind.UNKNOWN
    assert "invalid Prometheus label name 'dynamo-namespace'" in sample.reason


def test_evaluates_at_given_time(server):
    source = _source(server.url)
    inside = _one(source, "requests_waiting", LLM_A, now=T0 + 300)
    after = _one(source, "requests_waiting", LLM_A, now=T0 + 600 + 400)
    assert inside.value == 3
    assert after.kind is SampleKind.UNKNOWN


def test_every_preset_signal_parses(server):
    for preset in ("dynamo", "vllm", "sglang"):
        catalog = SignalCatalog(preset=preset)
        source = PrometheusSource(url=server.url, catalog=catalog)
        names = catalog.names() + ["ttft_p75", "ttft_p999"]
        labels = {"namespace": "nowhere"}
        samples = source.fetch([SignalRequest("t", name, labels) for name in names], now=NOW)["t"]
        for name in names:
            assert samples[name].reason.startswith("no series"), f"{preset} {name}: {samples[name]}"


# --- one query per signal group ----------------------------------------------------------------


def test_query_count_flat_in_targets(server):
    source = _source(server.url)
    signals = ("requests_waiting", "ttft_p90", "request_rate")

    one = [SignalRequest("many-0", signal, MANY[0]) for signal in signals]
    source.fetch(one, now=NOW)
    assert source.queries_made == len(signals)

    fifty = [SignalRequest(f"many-{i}", signal, labels) for i, labels in enumerate(MANY) for signal in signals]
    samples = source.fetch(fifty, now=NOW)
    assert source.queries_made == 2 * len(signals)
    for index in range(50):
        assert samples[f"many-{index}"]["requests_waiting"].value == index


def test_groups_by_label_names(server):
    source = _source(server.url)
    requests_ = [
        SignalRequest("a", "requests_waiting", LLM_A),
        SignalRequest("b", "requests_waiting", {"dynamo_namespace": "llm-idle"}),
        SignalRequest("c", "requests_waiting", MANY[7]),
    ]
    samples = source.fetch(requests_, now=NOW)
    assert source.queries_made == 2
    assert samples["a"]["requests_waiting"].value == 3
    assert samples["b"]["requests_waiting"].value == 0
    assert samples["c"]["requests_waiting"].value == 7


# --- escaping ------------------------------------------------------------------------------------


def test_odd_label_value_round_trips(server):
    sample = _one(_source(server.url), "requests_waiting", ODD)
    assert sample.value == 4


def test_regex_dot_is_literal(server):
    matchers = union_matchers({"dynamo_namespace": ["a.b"]})
    response = requests.get(
        f"{server.url}/api/v1/query",
        params={"query": f"dynamo_frontend_queued_requests{{{matchers}}}", "time": NOW},
        timeout=5,
    )
    series = response.json()["data"]["result"]
    assert [item["metric"]["dynamo_namespace"] for item in series] == ["a.b"]


# --- custom signals ------------------------------------------------------------------------------


def test_custom_signal_template(server):
    custom = {"queued_twice": CustomSignal(query="2 * sum by ({by}) (dynamo_frontend_queued_requests{{selector}})")}
    sample = _one(_source(server.url, custom=custom), "queued_twice", LLM_A)
    assert sample.value == 6


def test_custom_signal_window(server):
    query = "sum by ({by}) (rate(dynamo_frontend_requests_started_total{{selector}}[{window}]))"
    custom = {"started": CustomSignal(query=query)}
    sample = _one(_source(server.url, custom=custom), "started", LLM_A)
    assert sample.value == pytest.approx(10)


def test_custom_signal_idle_when_absent(server):
    query = "sum by ({by}) (dynamo_frontend_queued_requests{{selector}})"
    custom = {"queued": CustomSignal(query=query, idleWhenAbsent=True)}
    sample = _one(_source(server.url, custom=custom), "queued", {"dynamo_namespace": "gone"})
    assert sample.kind is SampleKind.IDLE


def test_custom_signal_several_series_is_unknown(server):
    custom = {"raw": CustomSignal(query="dynamo_component_kvstats_gpu_cache_usage_percent{{selector}} # {by}")}
    sample = _one(_source(server.url, custom=custom), "raw", LLM_A)
    assert sample.kind is SampleKind.UNKNOWN
    assert "several series" in sample.reason


def test_invalid_query_is_unknown_with_error(server, caplog):
    custom = {"broken": CustomSignal(query="sum by ({by}) (rate(foo{{selector}}[1m])")}
    source = _source(server.url, custom=custom)
    requests_ = [SignalRequest(f"t{i}", "broken", {"dynamo_namespace": f"x{i}"}) for i in range(3)]
    samples = source.fetch(requests_, now=NOW)
    for target in ("t0", "t1", "t2"):
        assert samples[target]["broken"].kind is SampleKind.UNKNOWN
        assert "HTTP 400: bad_data" in samples[target]["broken"].reason
    failures = [record for record in caplog.records if "failed" in record.getMessage()]
    assert len(failures) == 1
    assert "rate(foo{" in failures[0].getMessage()


def test_from_config(server):
    config = MetricsConfig.model_validate({"prometheus": {"url": server.url}, "preset": "dynamo", "windowSeconds": 120})
    source = PrometheusSource.from_config(config)
    assert source.catalog.resolve("ttft_p90").window_seconds == 120
    assert _one(source, "requests_waiting", LLM_A).value == 3


# --- range queries -------------------------------------------------------------------------------


def test_fetch_range_returns_series(server):
    source = _source(server.url)
    requests_ = [
        SignalRequest("a", "request_rate", LLM_A),
        SignalRequest("a", "requests_waiting", LLM_A),
        SignalRequest("idle", "ttft_p90", LLM_IDLE),
    ]
    series = source.fetch_range(requests_, start=T0 + 540, end=T0 + 1020, step=160)
    assert source.queries_made == 3

    waiting = series["a"]["requests_waiting"]
    assert [time for time, _ in waiting] == [T0 + 540, T0 + 700, T0 + 860, T0 + 1020]
    assert [sample.value for _, sample in waiting[:3]] == [3, 3, 3]
    assert waiting[3][1].kind is SampleKind.UNKNOWN

    rate = series["a"]["request_rate"]
    assert rate[0][1].value == pytest.approx(10)
    assert rate[1][1].kind is SampleKind.UNKNOWN

    assert series["idle"]["ttft_p90"][0][1].kind is SampleKind.IDLE


def test_fetch_range_inside_data(server):
    source = _source(server.url)
    series = source.fetch_range([SignalRequest("a", "ttft_p90", LLM_A)], start=T0 + 120, end=T0 + 480, step=60)
    values = [sample.value for _, sample in series["a"]["ttft_p90"]]
    assert len(values) == 7
    assert values == pytest.approx([0.8] * 7, rel=0.01)


# --- failures ------------------------------------------------------------------------------------


def test_server_down_is_unknown_for_every_target():
    source = _source(f"http://127.0.0.1:{free_port()}", timeout_seconds=2)
    requests_ = [SignalRequest(f"many-{i}", "ttft_p90", labels) for i, labels in enumerate(MANY[:5])]
    requests_.append(SignalRequest("a", "requests_waiting", LLM_A))
    samples = source.fetch(requests_, now=NOW)
    assert source.queries_made == 2
    for request in requests_:
        sample = samples[request.target][request.signal]
        assert sample.kind is SampleKind.UNKNOWN
        assert "prometheus query failed" in sample.reason
        assert "Connection refused" in sample.reason


class _Recorder(BaseHTTPRequestHandler):
    """Returns the series {pod="p"} = 1.5 for every query and records each request's path and headers."""

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.server.headers_seen.append(dict(self.headers))  # type: ignore[attr-defined]
        self.server.paths_seen.append(self.path)  # type: ignore[attr-defined]
        if self.server.stall.is_set():  # type: ignore[attr-defined]
            self.server.release.wait(10)  # type: ignore[attr-defined]
        body = json.dumps(
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {"pod": "p"}, "value": [NOW, "1.5"]}]},
            }
        ).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[ThreadingHTTPServer]:
    http_server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    http_server.headers_seen = []  # type: ignore[attr-defined]
    http_server.paths_seen = []  # type: ignore[attr-defined]
    http_server.stall = threading.Event()  # type: ignore[attr-defined]
    http_server.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=http_server.serve_forever, daemon=True)
    thread.start()
    yield http_server
    http_server.release.set()  # type: ignore[attr-defined]
    http_server.shutdown()
    http_server.server_close()
    thread.join(timeout=5)


def test_bearer_token_sent_and_reread(recorder, tmp_path: Path):
    token = tmp_path / "token"
    token.write_text("first-token\n")
    url = f"http://127.0.0.1:{recorder.server_port}"
    source = _source(url, bearer_token_file=token)

    sample = _one(source, "requests_waiting", {"pod": "p"})
    assert sample.value == 1.5
    assert recorder.headers_seen[-1]["Authorization"] == "Bearer first-token"

    token.write_text("second-token-longer\n")
    _one(source, "requests_waiting", {"pod": "p"})
    assert recorder.headers_seen[-1]["Authorization"] == "Bearer second-token-longer"


def test_missing_token_file_is_unknown(recorder, tmp_path: Path):
    url = f"http://127.0.0.1:{recorder.server_port}"
    source = _source(url, bearer_token_file=tmp_path / "absent")
    sample = _one(source, "requests_waiting", {"pod": "p"})
    assert sample.kind is SampleKind.UNKNOWN
    assert "bearer token file" in sample.reason
    assert recorder.headers_seen == []


def test_timeout_is_unknown_for_every_target(recorder):
    recorder.stall.set()
    url = f"http://127.0.0.1:{recorder.server_port}"
    source = _source(url, timeout_seconds=0.3)
    requests_ = [SignalRequest(f"t{i}", "ttft_p90", {"pod": f"p{i}"}) for i in range(4)]
    samples = source.fetch(requests_, now=NOW)
    assert source.queries_made == 1
    for index in range(4):
        sample = samples[f"t{index}"]["ttft_p90"]
        assert sample.kind is SampleKind.UNKNOWN
        assert "timed out after 0.3 s" in sample.reason


def test_timeout_sent_to_prometheus(recorder):
    url = f"http://127.0.0.1:{recorder.server_port}"
    source = _source(url, timeout_seconds=2.5)
    _one(source, "requests_waiting", {"pod": "p"})
    assert "timeout=2.5s" in recorder.paths_seen[-1]
    assert f"time={NOW!r}" in recorder.paths_seen[-1]


# --- scraping a live exporter --------------------------------------------------------------------


def test_scraped_exporter_value(prometheus_server, metrics_exporter):
    from prometheus_client import Gauge

    # A Dynamo name: prometheus_client 0.26 writes a colon in a metric name as an underscore in
    # the OpenMetrics format that Prometheus requests, so vllm: names would not round-trip here.
    gauge = Gauge("dynamo_frontend_queued_requests", "queued", ["namespace"], registry=metrics_exporter.registry)
    gauge.labels(namespace="live").set(6)
    server = prometheus_server(scrape_targets=[metrics_exporter.address], scrape_interval_seconds=0.2)

    source = _source(server.url)
    sample = _wait_for_value(source, "requests_waiting", {"namespace": "live"})
    assert sample.value == 6


def _wait_for_value(source: PrometheusSource, signal: str, labels: dict[str, str]) -> Sample:
    """Poll until the first scrape lands, at most 300 polls 0.1 s apart."""
    import time

    sample = Sample.unknown("not polled")
    for _ in range(300):
        sample = source.fetch([SignalRequest("t", signal, labels)])["t"][signal]
        if sample.is_value:
            break
        time.sleep(0.1)
    return sample


# --- TLS -----------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """Write a certificate for 127.0.0.1 and its key; the certificate is its own CA."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "tls.crt"
    key_path = tmp_path / "tls.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_recorder(recorder, tmp_path: Path) -> tuple[str, Path]:
    import ssl

    cert_path, key_path = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    recorder.socket = context.wrap_socket(recorder.socket, server_side=True)
    return f"https://127.0.0.1:{recorder.server_port}", cert_path


def test_tls_with_ca_file(tls_recorder):
    url, ca_file = tls_recorder
    sample = _one(_source(url, ca_file=ca_file), "requests_waiting", {"pod": "p"})
    assert sample.value == 1.5


def test_tls_untrusted_is_unknown(tls_recorder):
    url, _ = tls_recorder
    sample = _one(_source(url), "requests_waiting", {"pod": "p"})
    assert sample.kind is SampleKind.UNKNOWN
    assert "CERTIFICATE_VERIFY_FAILED" in sample.reason


def test_tls_insecure_skip_verify(tls_recorder):
    url, _ = tls_recorder
    with pytest.warns(Warning):
        sample = _one(_source(url, insecure_skip_verify=True), "requests_waiting", {"pod": "p"})
    assert sample.value == 1.5


# --- grouping invariants -------------------------------------------------------------------------


def test_no_requests_no_queries(recorder):
    source = _source(f"http://127.0.0.1:{recorder.server_port}")
    assert source.fetch([], now=NOW) == {}
    assert source.queries_made == 0


def test_le_series_label_is_unknown(recorder):
    source = _source(f"http://127.0.0.1:{recorder.server_port}")
    sample = _one(source, "ttft_p90", {"le": "1"})
    assert sample.kind is SampleKind.UNKNOWN
    assert "histogram bucket label" in sample.reason
    assert source.queries_made == 0


def test_range_failure_is_unknown_at_every_step():
    source = _source(f"http://127.0.0.1:{free_port()}", timeout_seconds=2)
    series = source.fetch_range([SignalRequest("a", "ttft_p90", LLM_A)], start=T0, end=T0 + 120, step=60)
    points = series["a"]["ttft_p90"]
    assert [time for time, _ in points] == [T0, T0 + 60, T0 + 120]
    for _, sample in points:
        assert sample.kind is SampleKind.UNKNOWN
        assert "prometheus query failed" in sample.reason


label_values = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
request_lists = st.lists(
    st.tuples(
        st.sampled_from(["ttft_p90", "request_rate", "kv_cache_usage"]),
        st.dictionaries(st.sampled_from(["namespace", "pod", "model"]), label_values, max_size=3),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request_lists)
def test_one_query_per_group_property(recorder, entries):
    source = _source(f"http://127.0.0.1:{recorder.server_port}")
    requests_ = [SignalRequest(f"t{index}", signal, labels) for index, (signal, labels) in enumerate(entries)]
    samples = source.fetch(requests_, now=NOW)

    groups = {(request.signal, request.label_key()) for request in requests_}
    assert source.queries_made == len(groups)
    for request in requests_:
        sample = samples[request.target][request.signal]
        # The recorder returns only the series {pod="p"}. An absent label reads as "", as in PromQL.
        matches = all({"pod": "p"}.get(name, "") == value for name, value in request.series_labels.items())
        assert sample.is_value == matches, sample
        assert not sample.is_idle


def test_large_group_split_by_selector_size(server, monkeypatch):
    import metrics.prometheus

    monkeypatch.setattr(metrics.prometheus, "MAX_SELECTOR_CHARS", 100)
    source = _source(server.url)
    requests_ = [SignalRequest(f"many-{i}", "requests_waiting", labels) for i, labels in enumerate(MANY)]
    samples = source.fetch(requests_, now=NOW)

    # Each value costs its length plus a separator: "many" 5, "many-0".."many-9" 7, "many-10" on 8.
    # Parts fill up to 100 characters: 13, 11, 11, 11 and 4 targets.
    assert source.queries_made == 5
    for index in range(50):
        assert samples[f"many-{index}"]["requests_waiting"].value == index
