"""Replay of recorded signals: parsing errors and the field-failure kinds, open loop."""

import copy
import json
from pathlib import Path

import pytest

from autoscaler.cli import main
from autoscaler.config import parse_config
from autoscaler.replay import ReplayError, read_recording, run_replay

DECODE = "llm/podclique/pcs-0-decode"
PREFILL = "llm/podcliquescalinggroup/pcs-0-prefill"

CONFIG = {
    "intervalSeconds": 15,
    "targets": [
        {
            "name": "decode",
            "podCliqueSets": {"namespace": "llm"},
            "level": "clique",
            "clique": {"name": "decode"},
            "minReplicas": 1,
            "maxReplicas": 10,
            "policies": [
                {"name": "latency-slo", "params": {"signal": "itl_p90", "slo_seconds": 0.05}},
                {"name": "kv-cache", "params": {"target_utilisation": 0.8}},
            ],
            # No stabilisation, so each tick shows the raw effect of its inputs.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
        },
        {
            "name": "prefill",
            "podCliqueSets": {"namespace": "llm"},
            "level": "scalingGroup",
            "scalingGroup": "prefill",
            "maxReplicas": 6,
            "policies": [{"name": "latency-slo", "params": {"signal": "ttft_p90", "slo_seconds": 0.5}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
        },
    ],
}


def write_csv(tmp_path: Path, rows: list[str], name: str = "metrics.csv") -> Path:
    path = tmp_path / name
    path.write_text("time,target,signal,value\n" + "\n".join(rows) + "\n")
    return path


def replay_rows(tmp_path, rows, config=CONFIG):
    return run_replay(parse_config(config), write_csv(tmp_path, rows))


def desired_by_time(records, target=DECODE):
    return [(record["time"], record["desired"]) for record in records if record["target"] == target]


def test_zero_traffic_scales_down_to_floor(tmp_path):
    """A 0/0 window at zero traffic is idle, not unknown, so an idle fleet goes to its floor."""
    rows = [
        f"0,{DECODE},replicas,6",
        f"0,{DECODE},itl_p90,nan",
        f"0,{DECODE},kv_cache_usage,0",
        f"0,{DECODE},min_available,2",
    ]
    records = replay_rows(tmp_path, rows)
    assert desired_by_time(records) == [(0.0, 2)]
    assert records[0]["current"] == 6


def test_failed_query_never_scales_down(tmp_path):
    """A failed read is unknown, never zero, so nothing scales down at peak."""
    rows = [f"0,{DECODE},replicas,8", f"0,{DECODE},itl_p90,error", f"0,{DECODE},kv_cache_usage,error"]
    records = replay_rows(tmp_path, rows)
    assert desired_by_time(records) == [(0.0, 8)]
    assert records[0]["reason"].startswith("hold at 8: no policy has data")
    assert "query failed" in records[0]["reason"]


def test_outside_change_is_corrected(tmp_path):
    """The live value is the truth, so a reset by hand or by Grove's recovery is re-asserted.

    The rule keeps the default 300 s scale-down window, which still contains the earlier
    recommendation of 4 when the reset arrives.
    """
    config = copy.deepcopy(CONFIG)
    del config["targets"][0]["behavior"]
    rows = [
        f"0,{DECODE},replicas,2",
        f"0,{DECODE},itl_p90,0.1",
        f"0,{DECODE},kv_cache_usage,0.5",
        f"15,{DECODE},itl_p90,0.05",
        f"15,{DECODE},kv_cache_usage,0.5",
        # Grove's recovery resets the clique to its template value of 2.
        f"30,{DECODE},replicas,2",
        f"30,{DECODE},itl_p90,0.05",
        f"30,{DECODE},kv_cache_usage,0.5",
    ]
    records = [record for record in replay_rows(tmp_path, rows, config) if record["target"] == DECODE]
    assert [(record["current"], record["desired"]) for record in records] == [(2, 4), (4, 4), (2, 4)]


def test_no_flapping_between_n_and_n_minus_one(tmp_path):
    """Removing one replica would push the rest over the SLO, so the count does not flap to N-1."""
    rows = [f"0,{DECODE},replicas,4"]
    for tick in range(6):
        rows += [f"{tick * 15},{DECODE},itl_p90,0.042", f"{tick * 15},{DECODE},kv_cache_usage,0.5"]
    records = replay_rows(tmp_path, rows)
    assert {desired for _, desired in desired_by_time(records)} == {4}


def test_one_failing_metric_blocks_scale_down_by_another(tmp_path):
    """KV usage calls for fewer replicas but ITL is unknown, so nothing scales down."""
    rows = [f"0,{DECODE},replicas,6", f"0,{DECODE},itl_p90,error", f"0,{DECODE},kv_cache_usage,0.1"]
    assert desired_by_time(replay_rows(tmp_path, rows)) == [(0.0, 6)]


def test_one_failing_metric_still_allows_scale_up(tmp_path):
    rows = [f"0,{DECODE},replicas,2", f"0,{DECODE},itl_p90,error", f"0,{DECODE},kv_cache_usage,1.0"]
    assert desired_by_time(replay_rows(tmp_path, rows)) == [(0.0, 3)]


def test_label_mismatch_missing_series_holds(tmp_path):
    """No series for a target (a label mismatch, recorded as empty) is unknown, so the target keeps its count."""
    rows = [f"0,{DECODE},replicas,5", f"0,{DECODE},itl_p90,", f"0,{DECODE},kv_cache_usage,"]
    records = replay_rows(tmp_path, rows)
    assert desired_by_time(records) == [(0.0, 5)]


def test_absent_replicas_takes_last_decision_as_applied(tmp_path):
    rows = [
        f"0,{PREFILL},replicas,1",
        f"0,{PREFILL},ttft_p90,1.0",
        f"15,{PREFILL},ttft_p90,0.5",
    ]
    records = [record for record in replay_rows(tmp_path, rows) if record["target"] == PREFILL]
    assert [(record["time"], record["current"], record["desired"]) for record in records] == [(0.0, 1, 2), (15.0, 2, 2)]


def test_rfc3339_times_are_kept(tmp_path):
    rows = [
        f"2026-12-01T10:00:00Z,{PREFILL},replicas,1",
        f"2026-12-01T10:00:00Z,{PREFILL},ttft_p90,0.2",
        f"2026-12-01T10:00:15Z,{PREFILL},ttft_p90,0.2",
    ]
    records = replay_rows(tmp_path, rows)
    assert [record["time"] for record in records] == ["2026-12-01T10:00:00Z", "2026-12-01T10:00:15Z"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([f"abc,{DECODE},replicas,1"], "metrics.csv:2: invalid time 'abc'"),
        (["0,llm/pod/x,replicas,1"], "metrics.csv:2: invalid target 'llm/pod/x': kind 'pod' is not one of"),
        (["0,llm-decode,replicas,1"], "metrics.csv:2: invalid target 'llm-decode': expected namespace/kind/name"),
        ([f"0,{DECODE},replicas,1", f"0,{DECODE},itl_p90,fast"], "metrics.csv:3: invalid value 'fast'"),
        ([f"0,{DECODE},replicas,1.5"], "metrics.csv:2: invalid replicas value '1.5'"),
        ([f"0,{DECODE},replicas"], "metrics.csv:2: expected 4 columns"),
        ([f"0,{DECODE},,1"], "metrics.csv:2: missing signal name"),
        ([f"0,{DECODE},replicas,1", f"2026-12-01T10:00:00Z,{DECODE},itl_p90,1"], "metrics.csv:3: time '2026-12-01T10:00:00Z' mixes"),
        ([f"2026-12-01T10:00:00,{DECODE},replicas,1"], "metrics.csv:2: time '2026-12-01T10:00:00' has no time zone"),
        ([f"0,{DECODE},itl_p90,0.1"], "metrics.csv:2: target llm/podclique/pcs-0-decode has no replicas row"),
        (["0,other/podclique/x-0-decode,replicas,1"], "metrics.csv:2: target other/podclique/x-0-decode matches no rule"),
        ([f"nan,{DECODE},replicas,1"], "metrics.csv:2: invalid time 'nan': expected finite seconds"),
        ([f"inf,{DECODE},replicas,1"], "metrics.csv:2: invalid time 'inf': expected finite seconds"),
        ([f"0,{DECODE},replicas,1", f"0,{DECODE},ttft_bogus,1"], "metrics.csv:3: unknown signal 'ttft_bogus'"),
        ([f"0,{DECODE},replicas,1", f"0,{DECODE},replicas,2"], "metrics.csv:3: duplicate row for time 0, target llm/podclique/pcs-0-decode, signal replicas (first on line 2)"),
        ([f"0,{DECODE},replicas,99999999999999999999"], "metrics.csv:2: invalid replicas value '99999999999999999999'"),
    ],
)
def test_malformed_rows_name_the_line(tmp_path, rows, message):
    with pytest.raises(ReplayError) as caught:
        replay_rows(tmp_path, rows)
    assert message in str(caught.value)


def test_bad_header_rejected(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("t,target,signal,value\n")
    with pytest.raises(ReplayError, match=r"metrics.csv:1: invalid header"):
        read_recording(path)


def test_replay_command_writes_json_lines(tmp_path, capsys):
    import yaml

    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    metrics = write_csv(tmp_path, [f"0,{DECODE},replicas,2", f"0,{DECODE},itl_p90,0.1", f"0,{DECODE},kv_cache_usage,0.5"])
    out = tmp_path / "decisions.jsonl"
    assert main(["replay", "--config", str(config_path), "--metrics", str(metrics), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [{"time": 0.0, "target": DECODE, "current": 2, "desired": 4, "reason": lines[0]["reason"]}]
    assert "itl_p90" in lines[0]["reason"]


def test_replay_command_rejects_bad_file(tmp_path, capsys):
    import yaml

    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    metrics = write_csv(tmp_path, [f"0,{DECODE},replicas,many"])
    assert main(["replay", "--config", str(config_path), "--metrics", str(metrics)]) == 2
    assert "metrics.csv:2: invalid value 'many'" in capsys.readouterr().err


def test_podcliqueset_scales_to_zero_and_wakes_on_queue(tmp_path):
    """Scale-to-zero is a PodCliqueSet-level choice (minReplicas 0); queued demand brings it back."""
    system = "llm/podcliqueset/sys"
    config = {
        "targets": [
            {
                "name": "system",
                "podCliqueSets": {"namespace": "llm"},
                "level": "podcliqueset",
                "minReplicas": 0,
                "maxReplicas": 4,
                "policies": [{"name": "target", "params": {"signal": "requests_waiting", "type": "AverageValue", "value": 4}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
            }
        ]
    }
    rows = [
        f"0,{system},replicas,1",
        f"0,{system},requests_waiting,nan",
        f"15,{system},requests_waiting,nan",
        f"30,{system},requests_waiting,10",
    ]
    records = replay_rows(tmp_path, rows, config)
    assert [(record["current"], record["desired"]) for record in records] == [(1, 0), (0, 0), (0, 3)]


def test_non_utf8_recording_named(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"time,target,signal,value\n\xff\xfe,1,2,3\n")
    with pytest.raises(ReplayError, match=r"metrics.csv: not UTF-8 text"):
        read_recording(path)


def test_budget_without_gpu_rows_warns(tmp_path, caplog):
    config = copy.deepcopy(CONFIG)
    config["budgets"] = [{"name": "gpus", "maxGpus": 4}]
    replay_rows(tmp_path, [f"0,{DECODE},replicas,2", f"0,{DECODE},itl_p90,0.1", f"0,{DECODE},kv_cache_usage,0.5"], config)
    assert "no gpus_per_replica rows" in caplog.text
