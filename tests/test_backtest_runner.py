"""End-to-end backtest: engine in the loop, baselines, oracle, JSON/CSV/plot outputs and CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autoscaler.backtest import baselines, cli, traces
from autoscaler.backtest.cluster import build_topology, default_manifest
from autoscaler.backtest.oracle import oracle_for_shape, oracle_for_trace
from autoscaler.backtest.runner import Settings, Workload, run_backtest
from autoscaler.backtest.serving_fluid import FluidServingModel
from autoscaler.backtest.signals import DECODE, PREFILL
from autoscaler.config import load_config
from policies.profile import Profile, bundled_profile_dir


@pytest.fixture(scope="module")
def profile() -> Profile:
    return Profile.load(bundled_profile_dir())


@pytest.fixture(scope="module")
def config():
    return load_config(cli.default_config_path())


@pytest.fixture(scope="module")
def short_trace() -> traces.Trace:
    trace = traces.cut(traces.load(traces.bundled_trace_path("azure-conv")), 0, 900)
    return traces.scale_rate(trace, 10, seed=1)


def test_oracle_sizes_each_window(profile, short_trace):
    oracle = oracle_for_trace(short_trace, profile, prefill_gpus=5, decode_gpus=3, itl_slo_s=0.05, window_s=60)
    assert oracle.prefill_replicas.size == 15
    assert np.all(oracle.prefill_replicas >= 1)
    assert np.all(oracle.decode_replicas >= 1)
    assert oracle.gpu_hours == pytest.approx(float(np.sum(oracle.gpus * 60)) / 3600, rel=0.01)
    # The prompt work of the busiest window fits the oracle's prefill replicas.
    window = np.minimum((short_trace.arrival_s // 60).astype(int), 14)
    work = np.bincount(window, weights=profile.prefill_ttft_seconds(short_trace.isl.astype(float)), minlength=15) / 60
    assert np.all(work <= oracle.prefill_replicas * 5)
    assert np.all(work > (oracle.prefill_replicas - 1) * 5)


def test_oracle_for_shape_scales_with_rate(profile, short_trace):
    shape = traces.RateShape("flat", np.arange(0, 3600, 600.0), np.array([10, 20, 40, 80, 160, 320.0]), 600.0)
    oracle = oracle_for_shape(shape, short_trace, profile, prefill_gpus=1, decode_gpus=1, itl_slo_s=0.05)
    assert np.all(np.diff(oracle.prefill_replicas) >= 0)
    assert oracle.prefill_replicas[-1] > oracle.prefill_replicas[0]


def test_backtest_runs_engine_and_baselines(profile, config, short_trace):
    settings = Settings(mode="request")
    workload = Workload(name=short_trace.name, duration_s=short_trace.duration_s, trace=short_trace)
    oracle = oracle_for_trace(short_trace, profile, prefill_gpus=5, decode_gpus=3, itl_slo_s=0.05)
    topology = build_topology(config, default_manifest())
    roles = {target.discovered.rule: target.role for target in topology.targets}
    gpus = {target.discovered.rule: target.gpus_per_replica for target in topology.targets}
    policy_sets = [
        baselines.PolicySet("example", config),
        baselines.static_peak(config, {PREFILL: 1, DECODE: 1}),
        baselines.hpa_kv_cache(config),
    ]
    dynamo = baselines.dynamo_planner(config, roles, gpus, ttft_slo_s=0.5, itl_slo_s=0.05, profile_dir=None)
    if dynamo is not None:
        policy_sets.append(dynamo)
    report = run_backtest(workload, policy_sets, profile, default_manifest(), settings, oracle, show_progress=False)

    by_name = {result.policy: result for result in report.results}
    static = by_name["static-peak"]
    assert static.scale_actions == 0
    assert static.peak_gpus == 8
    assert static.gpu_hours == pytest.approx(8 * short_trace.duration_s / 3600, rel=1e-6)
    for result in report.results:
        assert 0 <= result.attainment <= 1
        assert result.attainment <= min(result.ttft_attainment, result.itl_attainment)
        assert result.oracle_ratio == pytest.approx(result.gpu_hours / oracle.gpu_hours)
        assert len(result.timeline.time_s) == len(result.timeline.gpus)
    # Prefill KV stays nearly empty, so an HPA on KV-cache usage shrinks prefill to its minimum.
    assert by_name["hpa-kv-cache"].timeline.replicas[PREFILL][-1] == 1


def test_cli_writes_json_csv_plot(tmp_path, capsys):
    json_path = tmp_path / "result.json"
    code = cli.main(
        ["--end", "600", "--rate-scale", "6", "--quiet", "--json", str(json_path), "--csv", str(tmp_path / "csv"), "--plot", str(tmp_path / "plot.png")]
    )
    assert code == 0
    document = json.loads(json_path.read_text())
    assert set(document) >= {"trace", "slo", "results", "oracle"}
    assert set(document["trace"]) >= {"name", "requests", "duration_s"}
    assert document["slo"] == {"ttft_s": 0.5, "itl_s": 0.05}
    keys = {"policy", "attainment", "ttft_attainment", "itl_attainment", "gpu_hours", "oracle_ratio", "scale_actions", "peak_gpus"}
    assert all(set(result) >= keys for result in document["results"])
    policies = [result["policy"] for result in document["results"]]
    assert "static-peak" in policies
    assert "hpa-kv-cache" in policies
    assert document["oracle"]["gpu_hours"] > 0
    assert (tmp_path / "plot.png").stat().st_size > 1000
    assert (tmp_path / "csv" / "static-peak.csv").read_text().startswith("time_s,prefill_replicas")
    output = capsys.readouterr().out
    assert "oracle (lower bound)" in output


def test_cli_bad_trace_row_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("time_s,input_tokens,output_tokens\n0,10,10\n1,ten,10\n")
    code = cli.main(["--trace", str(path), "--quiet"])
    assert code == 2
    error = capsys.readouterr().err
    assert f"{path}:3: input_tokens is 'ten'" in error
    assert "Traceback" not in error


def test_cli_bad_config_exits_2(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("targets: []\n")
    code = cli.main(["--config", str(path), "--quiet", "--end", "60"])
    assert code == 2
    assert str(path) in capsys.readouterr().err


def test_cli_rate_shape_needs_fluid(tmp_path, capsys):
    directory = tmp_path / "shape"
    directory.mkdir()
    (directory / "chunk-0-trace.csv").write_text("0,1,1,Gamma,1,1\n600,2,1,Gamma,1,1\n")
    code = cli.main(["--trace", str(directory), "--mode", "request", "--quiet"])
    assert code == 2
    assert "use --mode fluid" in capsys.readouterr().err


def test_cli_fluid_rate_shape(tmp_path):
    directory = tmp_path / "shape"
    directory.mkdir()
    rows = "".join(f"{index * 600},{rate},1,Gamma,1,1\n" for index, rate in enumerate([20, 60, 150, 60]))
    (directory / "chunk-0-trace.csv").write_text(rows)
    output = tmp_path / "fluid.json"
    code = cli.main(["--trace", str(directory), "--quiet", "--json", str(output)])
    assert code == 0
    document = json.loads(output.read_text())
    assert document["settings"]["mode"] == "fluid"
    assert document["trace"]["duration_s"] == 2400
    assert document["trace"]["requests"] == (20 + 60 + 150 + 60) * 600
    static = next(result for result in document["results"] if result["policy"] == "static-peak")
    assert static["attainment"] > 0.9
    assert static["scale_actions"] == 0


def test_cli_unwritable_output(tmp_path, capsys):
    code = cli.main(["--end", "120", "--quiet", "--no-baselines", "--json", str(tmp_path / "missing" / "out.json")])
    assert code == 2
    assert "invalid --json" in capsys.readouterr().err


def _constant_shape(rate: float) -> traces.RateShape:
    return traces.RateShape("constant", np.array([0.0, 600.0, 1200.0]), np.full(3, rate), 600.0)


def test_oracle_decode_fits_fluid_model(profile):
    # The highest constant rate the oracle serves with one decode replica of 3 GPUs: the fluid
    # model's decode pool must carry it without a growing admission queue.
    lengths = traces.load(traces.bundled_trace_path("azure-conv"))
    low, high = 1.0, 1000.0
    for _ in range(30):
        middle = (low + high) / 2
        oracle = oracle_for_shape(_constant_shape(middle), lengths, profile, prefill_gpus=5, decode_gpus=3, itl_slo_s=0.05)
        low, high = (middle, high) if oracle.decode_replicas.max() == 1 else (low, middle)
    shape = _constant_shape(low)
    model = FluidServingModel(
        profile=profile, lengths=lengths, shape=shape, duration_s=shape.duration_s, prefill_gpus=5, decode_gpus=3,
        initial_prefill=8, initial_decode=1, cold_start_s=0, horizon_s=shape.duration_s, ttft_slo_s=0.5, itl_slo_s=0.05,
    )
    model.advance(shape.duration_s)
    assert model.recorder.waiting[DECODE][-1] < 1.0
    attainment, _, itl_attainment = model.attainment(0.5, 0.05)
    assert itl_attainment == 1.0
    assert attainment > 0.99


def test_oracle_decode_not_above_littles_law(profile):
    # Decode tokens/s/GPU the oracle assumes never exceed running requests / ITL at full KV, so a
    # rate 5 % above what one replica can carry that way gets a second replica.
    lengths = traces.load(traces.bundled_trace_path("azure-conv"))
    isl = np.maximum(lengths.isl, 1).astype(float)
    osl = lengths.osl.astype(float)
    context = float(np.mean(isl + osl / 2))
    running = profile.max_kv_tokens * 3 / context
    max_tokens_per_s = running / float(profile.decode_itl_seconds(1.0, context))
    rate = 1.05 * max_tokens_per_s / float(np.mean(osl))
    oracle = oracle_for_shape(_constant_shape(rate), lengths, profile, prefill_gpus=5, decode_gpus=3, itl_slo_s=0.05)
    assert oracle.decode_replicas[0] == 2
