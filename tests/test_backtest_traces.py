"""Trace loaders, cutting and rate scaling of the backtest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autoscaler.backtest import traces
from autoscaler.backtest.traces import TraceError


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_azure_loader_parses_times_and_lengths(tmp_path):
    path = _write(
        tmp_path / "azure.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:16:00,10,1\n",
    )
    trace = traces.load(path)
    assert trace.requests == 3
    assert trace.arrival_s[0] == 0.0
    assert trace.arrival_s[1] == pytest.approx(4.314579, abs=1e-6)
    assert trace.arrival_s[2] == pytest.approx(13.31941, abs=1e-5)
    assert trace.isl.tolist() == [374, 396, 10]
    assert trace.osl.tolist() == [44, 109, 1]


def test_azure_loader_applies_time_zone(tmp_path):
    path = _write(
        tmp_path / "week.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.5+00:00,1,1\n2024-05-10 02:00:01+02:00,1,1\n",
    )
    trace = traces.load_azure(path)
    assert trace.arrival_s.tolist() == pytest.approx([0.0, 0.5])


def test_bundled_conv_trace():
    trace = traces.load(traces.bundled_trace_path("azure-conv"))
    assert trace.requests == 19366
    assert 3490 < trace.duration_s < 3510
    assert np.all(np.diff(trace.arrival_s) >= 0)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("2023-11-16 18:15:50,abc,5", r"azure\.csv:3: ContextTokens is 'abc', expected a number"),
        ("2023-11-16 18:15:50,-4,5", r"azure\.csv:3: ContextTokens is '-4', expected a whole number"),
        ("yesterday,4,5", r"azure\.csv:3: invalid TIMESTAMP 'yesterday'"),
        ("2023-11-16 18:15:50,4", r"azure\.csv:3: expected 3 columns, got 2"),
        ("2023-13-45 18:15:50,4,5", r"azure\.csv:3: invalid date"),
    ],
)
def test_azure_bad_row_names_file_and_line(tmp_path, row, message):
    path = _write(tmp_path / "azure.csv", f"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,1,1\n{row}\n")
    with pytest.raises(TraceError, match=message):
        traces.load_azure(path)


def test_azure_bad_header(tmp_path):
    path = _write(tmp_path / "azure.csv", "time,in,out\n1,2,3\n")
    with pytest.raises(TraceError, match=r"azure\.csv:1: expected header TIMESTAMP,ContextTokens,GeneratedTokens"):
        traces.load_azure(path)


def test_mooncake_loader_reads_milliseconds(tmp_path):
    lines = [
        {"timestamp": 0, "input_length": 100, "output_length": 5, "hash_ids": [0]},
        {"timestamp": 1500, "input_length": 200, "output_length": 7, "hash_ids": [1]},
    ]
    path = _write(tmp_path / "trace.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    trace = traces.load(path)
    assert trace.arrival_s.tolist() == [0.0, 1.5]
    assert trace.isl.tolist() == [100, 200]
    assert trace.osl.tolist() == [5, 7]


def test_mooncake_missing_key_names_line(tmp_path):
    path = _write(tmp_path / "trace.jsonl", '{"timestamp": 0, "input_length": 1, "output_length": 1}\n{"timestamp": 5, "input_length": 1}\n')
    with pytest.raises(TraceError, match=r"trace\.jsonl:2: missing key 'output_length'"):
        traces.load_mooncake(path)


def test_mooncake_invalid_json_names_line(tmp_path):
    path = _write(tmp_path / "trace.jsonl", '{"timestamp": 0, "input_length": 1, "output_length": 1}\n{oops\n')
    with pytest.raises(TraceError, match=r"trace\.jsonl:2: invalid JSON"):
        traces.load_mooncake(path)


def test_generic_loader_sorts_and_shifts(tmp_path):
    path = _write(tmp_path / "mine.csv", "time_s,input_tokens,output_tokens\n105.5,10,2\n100,20,3\n")
    trace = traces.load(path)
    assert trace.arrival_s.tolist() == [0.0, 5.5]
    assert trace.isl.tolist() == [20, 10]


def test_generic_non_finite_time(tmp_path):
    path = _write(tmp_path / "mine.csv", "time_s,input_tokens,output_tokens\n1,1,1\nnan,1,1\n")
    with pytest.raises(TraceError, match=r"mine\.csv:3: time_s is 'nan', expected a finite number"):
        traces.load_generic(path)


def test_servegen_directory_sums_clients(tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    _write(directory / "chunk-0-trace.csv", "0,1.5,2.0,Gamma,0.5,1.0\n600,0,0,,0,0\n1200,2.0,1.0,Weibull,0.4,3.0\n")
    _write(directory / "chunk-1-trace.csv", "0,0.5,2.0,Gamma,0.5,1.0\n600,1,1,Gamma,1,1\n1200,0,0,,0,0\n")
    shape = traces.load(directory)
    assert isinstance(shape, traces.RateShape)
    assert shape.rate.tolist() == [2.0, 1.0, 2.0]
    assert shape.window_s == 600
    assert shape.duration_s == 1800
    assert shape.rate_at(np.array([0.0, 599.0, 600.0, 1799.0])).tolist() == [2.0, 2.0, 1.0, 2.0]


def test_servegen_bad_row(tmp_path):
    path = _write(tmp_path / "chunk.csv", "0,1.5,2.0,Gamma,0.5,1.0\n600,-1,0,,0,0\n")
    with pytest.raises(TraceError, match=r"chunk\.csv:2: rate is -1.0, expected >= 0"):
        traces.load_servegen(path)


def test_servegen_wrong_columns(tmp_path):
    path = _write(tmp_path / "chunk.csv", "0,1.5,2.0\n")
    with pytest.raises(TraceError, match=r"chunk\.csv:1: expected 6 columns"):
        traces.load_servegen(path)


def test_missing_file():
    with pytest.raises(TraceError, match="not found"):
        traces.load("/nonexistent/trace.csv")


def _uniform_trace(count: int = 1000, duration: float = 1000.0) -> traces.Trace:
    arrival = np.linspace(0, duration, count, endpoint=False)
    return traces.Trace("uniform", arrival, np.full(count, 100), np.full(count, 10), duration)


def test_cut_keeps_range_and_shifts():
    trace = traces.cut(_uniform_trace(), 100, 200)
    assert trace.requests == 100
    assert trace.arrival_s[0] == 0.0
    assert trace.duration_s == 100


def test_cut_rejects_empty_range():
    with pytest.raises(TraceError, match="no request arrives"):
        traces.cut(_uniform_trace(), 2000, 3000)


@pytest.mark.parametrize("factor", [0.25, 1.0, 2.0, 3.5])
def test_scale_rate_keeps_time_axis(factor):
    trace = _uniform_trace()
    scaled = traces.scale_rate(trace, factor, seed=3)
    assert scaled.duration_s == trace.duration_s
    assert scaled.arrival_s.min() >= 0
    assert scaled.arrival_s.max() <= trace.duration_s
    assert scaled.requests == pytest.approx(trace.requests * factor, rel=0.08)
    assert np.all(np.diff(scaled.arrival_s) >= 0)


def test_scale_rate_is_seeded():
    trace = _uniform_trace()
    first = traces.scale_rate(trace, 2.5, seed=7)
    second = traces.scale_rate(trace, 2.5, seed=7)
    other = traces.scale_rate(trace, 2.5, seed=8)
    assert np.array_equal(first.arrival_s, second.arrival_s)
    assert not np.array_equal(first.arrival_s, other.arrival_s)


def test_scale_rate_rejects_bad_factor():
    with pytest.raises(TraceError, match="invalid rate scale"):
        traces.scale_rate(_uniform_trace(), 0)


def _burst_trace() -> traces.Trace:
    """50 arrivals within one second at t=500 s of a 1000 s trace, plus one arrival per 10 s."""
    background = np.arange(0.0, 1000.0, 10.0)
    burst = np.linspace(500.0, 500.9, 50)
    arrival = np.sort(np.concatenate([background, burst]))
    ones = np.ones(arrival.size, dtype=np.int64)
    return traces.Trace("burst", arrival, 100 * ones, 10 * ones, 1000.0)


def _max_per_second(trace: traces.Trace) -> int:
    return int(np.bincount(trace.arrival_s.astype(np.int64)).max())


def test_scale_rate_jitter_spreads_bursts():
    trace = _burst_trace()
    stacked = traces.scale_rate(trace, 10, seed=1, jitter_s=0)
    spread = traces.scale_rate(trace, 10, seed=1)
    # The burst of 50 and the background arrival at t=500, ten times over.
    assert _max_per_second(stacked) == 510
    # The original burst of 50 stays; the 9 copies spread theirs over about 120 s.
    assert _max_per_second(spread) < 100
    assert spread.requests == 10 * trace.requests


def test_scale_rate_jitter_stays_inside_trace():
    scaled = traces.scale_rate(_burst_trace(), 5, seed=2, jitter_s=300)
    assert scaled.arrival_s.min() >= 0.0
    assert scaled.arrival_s.max() <= 1000.0


def test_scale_rate_rejects_bad_jitter():
    with pytest.raises(traces.TraceError, match="invalid jitter"):
        traces.scale_rate(_burst_trace(), 2, jitter_s=-1)


def test_token_bound_inclusive(tmp_path):
    path = _write(tmp_path / "g.csv", f"time_s,input_tokens,output_tokens\n0,{traces.MAX_TOKENS},1\n")
    assert traces.load(path).isl.tolist() == [traces.MAX_TOKENS]
    path = _write(tmp_path / "h.csv", f"time_s,input_tokens,output_tokens\n0,1,{traces.MAX_TOKENS + 1}\n")
    with pytest.raises(TraceError, match=r"h\.csv:2: output_tokens is '100000001', expected a whole number of tokens from 0 to 100000000"):
        traces.load(path)


def test_duration_bound(tmp_path):
    last = traces.MAX_DURATION_S
    path = _write(tmp_path / "g.csv", f"time_s,input_tokens,output_tokens\n5,1,1\n{last + 5},1,1\n")
    assert traces.load(path).duration_s == last
    path = _write(tmp_path / "h.csv", f"time_s,input_tokens,output_tokens\n5,1,1\n{last + 6},1,1\n")
    with pytest.raises(TraceError, match=r"h\.csv: the requests span 3\.456e\+07 s .* more than the maximum 34560000 s \(400 days\)"):
        traces.load(path)


def test_mooncake_rejects_boolean_timestamp(tmp_path):
    path = _write(tmp_path / "m.jsonl", '{"timestamp": false, "input_length": 1, "output_length": 1}\n')
    with pytest.raises(TraceError, match=r"m\.jsonl:1: timestamp is false, expected a number"):
        traces.load(path)


def test_servegen_file_not_utf8(tmp_path):
    directory = tmp_path / "shape"
    directory.mkdir()
    _write(directory / "a.csv", "0,1,1,Gamma,1,1\n600,1,1,Gamma,1,1\n")
    (directory / "b.csv").write_bytes(b"0,1,1,Gamma,1,1\n\xff\n")
    with pytest.raises(TraceError, match=r"shape/b\.csv: not UTF-8 text \(invalid byte 0xff\)"):
        traces.load(directory)


def test_servegen_duration_bound(tmp_path):
    path = _write(tmp_path / "s.csv", f"0,1,1,Gamma,1,1\n{traces.MAX_DURATION_S},1,1,Gamma,1,1\n")
    with pytest.raises(TraceError, match="more than the maximum 34560000 s"):
        traces.load(path, "servegen")
