"""Backtest CLI input checks: bad files, options and values exit 2 with one line naming them, before any simulation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoscaler.backtest import baselines, cli, limits, traces
from autoscaler.backtest.runner import PolicyOutcome, Settings, Timeline, Workload
from autoscaler.config import load_config
from policies.profile import Profile, bundled_profile_dir
from tests.fixtures.prometheus import T0, free_port

REPOSITORY = Path(__file__).resolve().parents[1]


def _file(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _run_error(args: list[str], capsys) -> str:
    """Run the CLI, expect exit 2 before any simulation output, and return the one-line error."""
    code = cli.main([*args, "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


SERVEGEN_ROWS = "0,1,1,Gamma,1,1\n600,2,1,Gamma,1,1\n1200,2,1,Gamma,1,1\n"

# (case, files to write as {name: content}, arguments with {name} replaced by the file's path, expected text)
CASES = [
    ("trace not utf-8", {"t.csv": b"\xff\xfeTIMESTAMP\n"}, ["--trace", "{t.csv}"], "{t.csv}: not UTF-8 text (invalid byte 0xff)"),
    (
        "mooncake not utf-8",
        {"t.jsonl": b'{"timestamp": 0, "input_length": 1, "output_length": 1}\n\xff\n'},
        ["--trace", "{t.jsonl}"],
        "{t.jsonl}: not UTF-8 text",
    ),
    ("config not utf-8", {"c.yaml": b"\xff"}, ["--config", "{c.yaml}"], "--config {c.yaml}:1: not UTF-8 text (invalid byte 0xff"),
    ("config bad yaml", {"c.yaml": "a: 1\nb: [1\nc: 2\n"}, ["--config", "{c.yaml}"], "--config {c.yaml}:3:2: invalid YAML"),
    ("manifest not utf-8", {"m.yaml": b"kind: \xff\n"}, ["--manifest", "{m.yaml}"], "{m.yaml}:1: not UTF-8 text (invalid byte 0xff at byte offset 6)"),
    ("manifest bad yaml", {"m.yaml": "kind: PodCliqueSet\nspec: {a\n"}, ["--manifest", "{m.yaml}"], "{m.yaml}:3:1: invalid YAML"),
    (
        "azure tokens overflow",
        {"t.csv": "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,99999999999999999999999,4\n"},
        ["--trace", "{t.csv}"],
        "{t.csv}:2: ContextTokens is '99999999999999999999999', expected a whole number of tokens from 0 to 100000000",
    ),
    (
        "mooncake timestamp far",
        {"t.jsonl": '{"timestamp": 0, "input_length": 5, "output_length": 3}\n{"timestamp": 1e15, "input_length": 5, "output_length": 3}\n'},
        ["--trace", "{t.jsonl}"],
        "{t.jsonl}: the requests span 1e+12 s",
    ),
    (
        "generic time overflow",
        {"t.csv": "time_s,input_tokens,output_tokens\n0,1,1\n1e300,1,1\n"},
        ["--trace", "{t.csv}"],
        "more than the maximum 34560000 s (400 days)",
    ),
    (
        "mooncake boolean length",
        {"t.jsonl": '{"timestamp": 0, "input_length": true, "output_length": 3}\n'},
        ["--trace", "{t.jsonl}"],
        "{t.jsonl}:1: input_length is true, expected a number",
    ),
    ("profile is a file", {"p": "x"}, ["--profile", "{p}"], "profile {p} is not a directory"),
    ("rate scale too large", {}, ["--rate-scale", "1e6", "--end", "60"], "invalid --rate-scale 1e6 (factor 1e+06)"),
    ("rate scale leaves nothing", {}, ["--rate-scale", "1e-9"], "invalid --rate-scale 1e-9: AzureLLMInferenceTrace_conv would have 1.94e-05 requests"),
    ("rate scale not finite", {}, ["--rate-scale", "nan"], "invalid --rate-scale 'nan'"),
    ("rate scale negative", {}, ["--rate-scale", "-2"], "invalid --rate-scale '-2'"),
    ("history too many ticks", {}, ["--prometheus", "http://127.0.0.1:1", "--start", "0", "--end", "1764000000"], "more than the maximum 100000"),
    (
        "history simulation options",
        {"d": b""},
        ["--prometheus", "http://127.0.0.1:1", "--start", "0", "--end", "60", "--trace", "azure-code", "--rate-scale", "2", "--csv", "{d}", "--plot", "x.png"],
        "--trace, --rate-scale, --csv, --plot cannot be used with --prometheus",
    ),
    ("history url scheme", {}, ["--prometheus", "ftp://x", "--start", "0", "--end", "60"], "invalid --prometheus 'ftp://x'"),
    ("json is a directory", {}, ["--json", "{tmp}"], "invalid --json {tmp}: it is a directory"),
    ("json parent missing", {}, ["--json", "{tmp}/missing/x.json"], "invalid --json {tmp}/missing/x.json: directory {tmp}/missing does not exist"),
    ("csv is a file", {"f": "x"}, ["--csv", "{f}"], "invalid --csv {f}: it exists and is not a directory"),
    ("csv parent missing", {}, ["--csv", "{tmp}/a/b"], "invalid --csv {tmp}/a/b: directory {tmp}/a does not exist"),
    ("plot without suffix", {}, ["--plot", "{tmp}"], "invalid --plot {tmp}: the file name must end in .png, .pdf, .svg"),
    ("plot unknown suffix", {}, ["--plot", "{tmp}/x.txt"], "invalid --plot {tmp}/x.txt"),
    ("bundled trace format", {}, ["--trace", "azure-conv", "--format", "mooncake"], "invalid --format mooncake: the bundled trace azure-conv is in azure format"),
    ("lengths for a trace", {}, ["--lengths-from", "azure-code", "--end", "60"], "--lengths-from azure-code applies only to a rate shape"),
    (
        "request mode too long",
        {"t.csv": "time_s,input_tokens,output_tokens\n0,100,10\n1728000,100,10\n"},
        ["--trace", "{t.csv}"],
        "trace t spans 20.0 days, more than the 14 days that request mode simulates; replay a part with --start and --end or --mode fluid",
    ),
    (
        "fluid mode too long",
        {"t.csv": "time_s,input_tokens,output_tokens\n0,100,10\n3456000,100,10\n"},
        ["--trace", "{t.csv}", "--mode", "fluid"],
        "trace t spans 40.0 days, more than the 31 days that fluid mode simulates",
    ),
    ("servegen end not window", {"s.csv": SERVEGEN_ROWS}, ["--trace", "{s.csv}", "--end", "100"], "invalid --end 100: rate shape s has windows of 600 s"),
    ("servegen start not window", {"s.csv": SERVEGEN_ROWS}, ["--trace", "{s.csv}", "--start", "700"], "such as 600 or 1200"),
]


@pytest.mark.parametrize(("files", "args", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_cli_rejects_input(tmp_path, capsys, files, args, expected):
    paths = {name: str(_file(tmp_path, name, content)) for name, content in files.items()}
    paths["tmp"] = str(tmp_path)
    if "d" in files:
        # An existing directory, for options that take one.
        Path(paths["d"]).unlink()
        Path(paths["d"]).mkdir()

    def fill(text: str) -> str:
        for name, path in paths.items():
            text = text.replace("{" + name + "}", path)
        return text

    error = _run_error([fill(arg) for arg in args], capsys)
    assert fill(expected) in error
    assert "<unicode string>" not in error


@pytest.mark.parametrize(("option", "value"), [("--seed", "-1"), ("--ttft-slo", "0"), ("--gpus-per-pod", "-1"), ("--cold-start", "-5")])
def test_cli_option_value_named(capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([option, value, "--quiet"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {option}: invalid value '{value}'" in error


def test_cli_csv_directory_created(tmp_path, capsys):
    directory = tmp_path / "timelines"
    code = cli.main(["--end", "60", "--quiet", "--no-baselines", "--csv", str(directory)])
    assert code == 0
    assert (directory / "sla-planner_example_.csv").is_file()


def test_history_unreachable_exits_1(capsys):
    code = cli.main(["--prometheus", f"http://127.0.0.1:{free_port()}", "--start", str(T0), "--end", str(T0 + 60)])
    captured = capsys.readouterr()
    assert code == 1
    assert "every tick had unknown input" in captured.err
    assert "prometheus query failed" in captured.err


def test_baselines_ignore_user_preset():
    config = load_config(REPOSITORY / "examples" / "configs" / "multi-node-disaggregated.yaml")
    assert config.metrics.preset == "dynamo"
    hpa = baselines.hpa_kv_cache(config)
    planner = baselines.dynamo_planner(
        config, {"prefill": "prefill", "decode": "decode"}, {"prefill": 5.0, "decode": 3.0}, ttft_slo_s=0.5, itl_slo_s=0.05, profile_dir=None
    )
    assert hpa.config.metrics.preset == "vllm"
    assert planner is not None
    assert planner.config.metrics.preset == "vllm"
    assert [rule.name for rule in hpa.config.targets] == [rule.name for rule in config.targets]


def test_cli_runs_dynamo_preset_config(tmp_path):
    output = tmp_path / "out.json"
    config = REPOSITORY / "examples" / "configs" / "multi-node-disaggregated.yaml"
    code = cli.main(["--config", str(config), "--end", "60", "--quiet", "--json", str(output)])
    assert code == 0
    policies = [result["policy"] for result in json.loads(output.read_text())["results"]]
    assert policies == ["multi-node-disaggregated", "static-peak", "hpa-kv-cache", "dynamo-planner"]


@pytest.fixture(scope="module")
def profile() -> Profile:
    return Profile.load(bundled_profile_dir())


def _trace(isl: list[int], osl: list[int]) -> traces.Trace:
    count = len(isl)
    return traces.Trace("t", np.arange(count, dtype=float), np.array(isl, dtype=np.int64), np.array(osl, dtype=np.int64), float(count))


def test_warnings_long_prompts(profile):
    workload = Workload("t", 4.0, trace=_trace([100, 200, 20000, 30000], [10, 10, 10, 10]))
    warnings = limits.workload_warnings(workload, profile, Settings(ttft_slo_s=10.0), decode_gpus=3)
    assert len(warnings) == 1
    assert warnings[0].startswith("2 of 4 (50%) requests have prompts longer than the profile's longest input of 16372 tokens (up to 30000)")
    assert "estimate" in warnings[0]


def test_warnings_attainment_ceiling(profile):
    workload = Workload("t", 4.0, trace=_trace([100, 100, 100, 16000], [10, 10, 10, 10]))
    warnings = limits.workload_warnings(workload, profile, Settings(ttft_slo_s=0.3), decode_gpus=3)
    assert len(warnings) == 1
    assert "1 of 4 (25%) requests need more than the TTFT SLO of 0.3 s for their prefill alone" in warnings[0]
    assert "attainment is at most 75.0%" in warnings[0]


def test_warnings_output_exceeds_kv(profile):
    workload = Workload("t", 2.0, trace=_trace([100, 100], [10, 3_000_000]))
    warnings = limits.workload_warnings(workload, profile, Settings(), decode_gpus=3)
    assert len(warnings) == 1
    assert "1 of 2 (50%) requests need more KV cache (input + output up to 3000100 tokens) than a decode replica has (2835087 tokens)" in warnings[0]


def test_warnings_itl_slo_unreachable(profile):
    workload = Workload("t", 1.0, trace=_trace([100], [10]))
    warnings = limits.workload_warnings(workload, profile, Settings(itl_slo_s=0.001), decode_gpus=3)
    assert len(warnings) == 1
    assert "meets the ITL SLO of 1 ms (fastest 4.38 ms)" in warnings[0]


def test_warnings_none_for_bundled_trace(profile):
    trace = traces.load(traces.bundled_trace_path("azure-conv"))
    workload = Workload(trace.name, trace.duration_s, trace=trace)
    assert limits.workload_warnings(workload, profile, Settings(ttft_slo_s=1.0), decode_gpus=3) == []


def test_warnings_unfinished_requests():
    outcome = PolicyOutcome("slow", 0.5, 0.5, 1.0, 1.0, 1.0, 0, 1.0, Timeline(), unfinished=3)
    done = PolicyOutcome("fast", 1.0, 1.0, 1.0, 1.0, 1.0, 0, 1.0, Timeline(), unfinished=0)
    assert limits.outcome_warnings([outcome, done]) == [
        "policy slow left 3 requests unfinished at the end of the run; they count as missing the SLOs they had not met"
    ]


def test_cli_warnings_in_json(tmp_path):
    trace = _file(tmp_path, "t.csv", "time_s,input_tokens,output_tokens\n0,100,10\n1,20000,10\n2,100,10\n")
    output = tmp_path / "out.json"
    code = cli.main(["--trace", str(trace), "--quiet", "--no-baselines", "--json", str(output)])
    assert code == 0
    warnings = json.loads(output.read_text())["warnings"]
    assert len(warnings) == 1
    assert warnings[0].startswith("1 of 3 (33%) requests have prompts longer")
