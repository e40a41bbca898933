"""History mode: signals recorded in a real Prometheus replayed through the engine, open loop."""

from __future__ import annotations

import json

import pytest

from autoscaler.backtest import cli
from autoscaler.backtest.cluster import default_manifest
from autoscaler.backtest.history import parse_time, run_history
from autoscaler.config import parse_config
from metrics.catalog import SignalCatalog
from metrics.prometheus import PrometheusSource
from tests.conftest import require_binary
from tests.fixtures.prometheus import T0, Backfill, free_port

PREFILL = {"namespace": "default", "grove_io_podcliquescalinggroup": "multinode-disaggregated-0-prefill"}
DECODE = {"namespace": "default", "grove_io_podcliquescalinggroup": "multinode-disaggregated-0-decode"}


def _config_data() -> dict:
    rule = {"podCliqueSets": {"namespace": "default", "names": ["multinode-disaggregated"]}, "level": "scalingGroup", "maxReplicas": 8}
    return {
        "intervalSeconds": 15,
        "metrics": {"preset": "vllm", "windowSeconds": 60},
        "targets": [
            {**rule, "name": "prefill", "scalingGroup": "prefill", "policies": [{"name": "kv-cache"}]},
            {**rule, "name": "decode", "scalingGroup": "decode", "policies": [{"name": "kv-cache"}]},
        ],
    }


@pytest.fixture(scope="module")
def server(module_prometheus_server):
    require_binary("prometheus")
    require_binary("promtool")
    data = Backfill()
    data.vllm_engine({**PREFILL, "pod": "p0"}, kv_cache_usage=0.2, end=T0 + 900)
    data.vllm_engine({**DECODE, "pod": "d0"}, kv_cache_usage=0.95, end=T0 + 900)
    return module_prometheus_server(data)


def _source(url: str) -> PrometheusSource:
    return PrometheusSource(url=url, catalog=SignalCatalog(preset="vllm", window_seconds=60), timeout_seconds=5)


@pytest.mark.prometheus
def test_history_scales_on_recorded_usage(server):
    config = parse_config(_config_data())
    report = run_history(config, default_manifest(), _source(server.url), start=T0 + 60, end=T0 + 840)
    by_name = {target.target.rsplit("/", 1)[-1]: target for target in report.targets}
    decode = by_name["multinode-disaggregated-0-decode"]
    prefill = by_name["multinode-disaggregated-0-prefill"]
    assert len(report.times) == 53
    assert decode.replicas[0] == 1
    assert decode.replicas[-1] > 1
    assert decode.unknown_ticks == 0
    assert prefill.replicas[0] == 2
    assert prefill.replicas[-1] == 1
    assert report.gpu_hours(prefill) == pytest.approx(sum(prefill.replicas) * 5 * 15 / 3600)


@pytest.mark.prometheus
def test_history_unreachable_source_never_scales_down():
    config = parse_config(_config_data())
    source = PrometheusSource(url=f"http://127.0.0.1:{free_port()}", catalog=SignalCatalog(preset="vllm", window_seconds=60), timeout_seconds=1)
    report = run_history(config, default_manifest(), source, start=T0, end=T0 + 300)
    for target in report.targets:
        assert min(target.replicas) == target.replicas[0]
        assert target.unknown_ticks == len(report.times)


@pytest.mark.prometheus
def test_history_cli_json(server, tmp_path):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(json.dumps(_config_data()))
    output = tmp_path / "history.json"
    code = cli.main(
        ["--prometheus", server.url, "--config", str(config_path), "--start", str(T0 + 60), "--end", "2023-11-14T22:27:20Z", "--json", str(output)]
    )
    assert code == 0
    document = json.loads(output.read_text())
    assert document["history"]["ticks"] == 53
    assert {target["target"].rsplit("/", 1)[-1] for target in document["targets"]} == {
        "multinode-disaggregated-0-prefill",
        "multinode-disaggregated-0-decode",
    }
    assert document["decisions"][0]["time"] == T0 + 60


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1700000000", 1_700_000_000.0), ("2023-11-14T22:13:20Z", 1_700_000_000.0), ("2023-11-14T22:13:20", 1_700_000_000.0)],
)
def test_parse_time(text, expected):
    assert parse_time(text, "--start") == expected


def test_parse_time_rejects_text():
    with pytest.raises(ValueError, match="invalid --start 'yesterday'"):
        parse_time("yesterday", "--start")


def test_history_needs_range(capsys):
    code = cli.main(["--prometheus", "http://127.0.0.1:1", "--start", "0"])
    assert code == 2
    assert "needs --start and --end" in capsys.readouterr().err


def test_history_tick_bound():
    # The bound is checked before any query, so the unreachable address is never contacted.
    from autoscaler.backtest.history import MAX_TICKS

    config = parse_config(_config_data())
    source = PrometheusSource(url="http://127.0.0.1:1", catalog=SignalCatalog(preset="vllm", window_seconds=60), timeout_seconds=1)
    with pytest.raises(ValueError, match=f"{MAX_TICKS + 1} ticks of 15 s, more than the maximum {MAX_TICKS}"):
        run_history(config, default_manifest(), source, start=T0, end=T0 + MAX_TICKS * 15)
