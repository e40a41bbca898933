"""Request traces and rate shapes for the backtest, read from public trace formats.

A `Trace` is request-level: arrival time in seconds from the first request, input and output
length in tokens. A `RateShape` is a request rate per time window with no lengths; the fluid
mode pairs it with the lengths of a request-level trace.

Formats:
- `azure`: Azure LLM inference CSV, header `TIMESTAMP,ContextTokens,GeneratedTokens`,
  timestamps `YYYY-MM-DD HH:MM:SS[.fffffff][+00:00]`.
- `mooncake`: JSON lines with `timestamp` (ms from trace start), `input_length`, `output_length`.
- `generic`: CSV with header `time_s,input_tokens,output_tokens`, time in seconds (any origin).
- `servegen`: ServeGen per-client rate files without header (`timestamp_s, rate, cv, pattern,
  shape, scale`, one row per window); a directory of `*.csv` files is summed over clients.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import numpy as np

FORMATS = ("azure", "mooncake", "generic", "servegen")

BUNDLED_TRACES = {
    "azure-conv": "AzureLLMInferenceTrace_conv.csv",
    "azure-code": "AzureLLMInferenceTrace_code.csv",
}

_AZURE_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?$")


_EPOCH_ORDINAL = datetime(1970, 1, 1).toordinal()

# Upper bounds on trace values. They are far above any served model's context (about 10^7
# tokens today) and any published trace (weeks), and they keep token counts within int64 and
# the per-second arrays of the fluid model within memory.
MAX_TOKENS = 100_000_000
MAX_DURATION_S = 400 * 86400.0


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and, for a bad row, the line."""


@dataclass(frozen=True)
class Trace:
    """Requests sorted by arrival; `arrival_s` starts at 0 and `duration_s` covers the last arrival."""

    name: str
    arrival_s: np.ndarray
    isl: np.ndarray
    osl: np.ndarray
    duration_s: float

    @property
    def requests(self) -> int:
        return int(self.arrival_s.size)


@dataclass(frozen=True)
class RateShape:
    """Request rate (req/s) per window starting at `time_s[i]` (s from the first window)."""

    name: str
    time_s: np.ndarray
    rate: np.ndarray
    window_s: float

    @property
    def duration_s(self) -> float:
        return float(self.time_s[-1] + self.window_s) if self.time_s.size else 0.0

    def rate_at(self, seconds: np.ndarray) -> np.ndarray:
        """Return the rate in force at each time (piecewise constant per window)."""
        index = np.searchsorted(self.time_s, seconds, side="right") - 1
        return self.rate[np.clip(index, 0, self.rate.size - 1)]


def bundled_trace_path(name: str = "azure-conv") -> Path:
    """Path of a packaged trace: azure-conv or azure-code (Azure LLM inference 2023, CC-BY-4.0)."""
    if name not in BUNDLED_TRACES:
        raise TraceError(f"unknown bundled trace {name!r}; known: {', '.join(BUNDLED_TRACES)}")
    return Path(str(resources.files("autoscaler.data").joinpath("traces", BUNDLED_TRACES[name])))


def detect_format(path: Path) -> str:
    """Guess the format from the path: a directory or a headerless rate file is servegen."""
    if path.is_dir():
        return "servegen"
    if path.suffix in (".jsonl", ".json"):
        return "mooncake"
    try:
        first = _first_line(path)
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from None
    if first.startswith("TIMESTAMP"):
        return "azure"
    if first.startswith("time_s"):
        return "generic"
    if first[:1].isdigit():
        return "servegen"
    raise TraceError(f"{path}: cannot tell the trace format from line 1 ({first[:60]!r}); pass --format {'|'.join(FORMATS)}")


def load(path: str | Path, trace_format: str = "auto") -> Trace | RateShape:
    """Read a trace or rate shape in the given format (or detect it); raise TraceError."""
    path = Path(path)
    if not path.exists():
        raise TraceError(f"trace {path} not found")
    if trace_format == "auto":
        trace_format = detect_format(path)
    loaders = {"azure": load_azure, "mooncake": load_mooncake, "generic": load_generic, "servegen": load_servegen}
    if trace_format not in loaders:
        raise TraceError(f"unknown trace format {trace_format!r}; expected one of {', '.join(FORMATS)}")
    try:
        return loaders[trace_format](path)
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from None


def _csv_rows(path: Path, expected: list[str], *, comments: bool = False):
    """Yield (line number, row) of a 3-column CSV after checking its header; raise TraceError on a short row."""
    with _open(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [column.strip() for column in header[:3]] != expected:
            raise TraceError(f"{path}:1: expected header {','.join(expected)}, got {','.join(header or [])!r}")
        for row in reader:
            line = reader.line_num
            if not row or (comments and row[0].startswith("#")):
                continue
            if len(row) < 3:
                raise TraceError(f"{path}:{line}: expected 3 columns, got {len(row)}: {','.join(row)!r}")
            yield line, row


def load_azure(path: str | Path) -> Trace:
    path = Path(path)
    times, isl, osl = [], [], []
    for line, row in _csv_rows(path, ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]):
        times.append(_parse_azure_timestamp(row[0].strip(), path, line))
        isl.append(_parse_tokens(row[1], "ContextTokens", path, line))
        osl.append(_parse_tokens(row[2], "GeneratedTokens", path, line))
    return _make_trace(path.stem, times, isl, osl, path)


def load_mooncake(path: str | Path) -> Trace:
    path = Path(path)
    times, isl, osl = [], [], []
    with _open(path) as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise TraceError(f"{path}:{line}: invalid JSON: {error.msg}") from None
            if not isinstance(record, dict):
                raise TraceError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
            for key in ("timestamp", "input_length", "output_length"):
                if key not in record:
                    raise TraceError(f"{path}:{line}: missing key {key!r}")
            times.append(_parse_number(record["timestamp"], "timestamp", path, line) / 1000.0)
            isl.append(_parse_tokens(record["input_length"], "input_length", path, line))
            osl.append(_parse_tokens(record["output_length"], "output_length", path, line))
    return _make_trace(path.stem, times, isl, osl, path)


def load_generic(path: str | Path) -> Trace:
    path = Path(path)
    times, isl, osl = [], [], []
    for line, row in _csv_rows(path, ["time_s", "input_tokens", "output_tokens"], comments=True):
        times.append(_parse_number(row[0], "time_s", path, line))
        isl.append(_parse_tokens(row[1], "input_tokens", path, line))
        osl.append(_parse_tokens(row[2], "output_tokens", path, line))
    return _make_trace(path.stem, times, isl, osl, path)


def load_servegen(path: str | Path) -> RateShape:
    """Read one ServeGen rate file, or sum every `*.csv` file of a directory window by window."""
    path = Path(path)
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise TraceError(f"{path}: no *.csv rate files in this directory")
    total: dict[float, float] = {}
    for file in files:
        try:
            rows = _read_rate_file(file)
        except UnicodeDecodeError as error:
            raise _not_utf8(file, error) from None
        for time_s, rate in rows:
            total[time_s] = total.get(time_s, 0.0) + rate
    times = np.array(sorted(total), dtype=float)
    rates = np.array([total[time_s] for time_s in times], dtype=float)
    if times.size < 2:
        raise TraceError(f"{path}: a rate shape needs at least 2 windows, got {times.size}")
    steps = np.diff(times)
    window = float(np.min(steps))
    if window <= 0 or not np.allclose(steps, window):
        raise TraceError(f"{path}: windows must be evenly spaced; found steps from {steps.min()} s to {steps.max()} s")
    duration = float(times[-1] - times[0] + window)
    if duration > MAX_DURATION_S:
        raise TraceError(f"{path}: the windows span {duration:.4g} s, more than the maximum {MAX_DURATION_S:.0f} s ({MAX_DURATION_S / 86400:.0f} days)")
    name = path.name if path.is_dir() else path.stem
    return RateShape(name=name, time_s=times - times[0], rate=rates, window_s=window)


def cut(trace: Trace, start_s: float | None = None, end_s: float | None = None) -> Trace:
    """Keep the requests arriving in [start_s, end_s) and shift them to start at 0."""
    start = 0.0 if start_s is None else float(start_s)
    end = trace.duration_s if end_s is None else float(end_s)
    if start < 0 or end <= start:
        raise TraceError(f"invalid time range start={start_s} end={end_s}: need 0 <= start < end (seconds)")
    keep = (trace.arrival_s >= start) & (trace.arrival_s < end) if end_s is not None else trace.arrival_s >= start
    if not np.any(keep):
        raise TraceError(f"{trace.name}: no request arrives between {start} s and {end} s (trace lasts {trace.duration_s:.0f} s)")
    duration = min(end, trace.duration_s) - start
    return Trace(trace.name, trace.arrival_s[keep] - start, trace.isl[keep], trace.osl[keep], duration)


def cut_shape(shape: RateShape, start_s: float | None = None, end_s: float | None = None) -> RateShape:
    start = 0.0 if start_s is None else float(start_s)
    end = shape.duration_s if end_s is None else float(end_s)
    if start < 0 or end <= start:
        raise TraceError(f"invalid time range start={start_s} end={end_s}: need 0 <= start < end (seconds)")
    keep = (shape.time_s + shape.window_s > start) & (shape.time_s < end)
    if not np.any(keep):
        raise TraceError(f"{shape.name}: no window between {start} s and {end} s (shape lasts {shape.duration_s:.0f} s)")
    times = shape.time_s[keep]
    return RateShape(shape.name, times - times[0], shape.rate[keep], shape.window_s)


DEFAULT_JITTER_SECONDS = 60.0


def scale_rate(trace: Trace, factor: float, seed: int = 0, jitter_s: float = DEFAULT_JITTER_SECONDS) -> Trace:
    """Multiply the request rate by `factor` while keeping the time axis.

    Above 1, whole copies of the trace are superposed and the fractional part is a random
    subset of one more copy. Every arrival of a copy after the first moves by its own uniform
    offset in [-jitter_s, +jitter_s], reflected at the trace's ends. So the extra users follow
    the minute-scale shape of the original, but their second-scale bursts are independent of
    the original's, instead of every burst arriving `factor` times at once. `jitter_s` 0 keeps
    the copies exactly on the original arrivals. Below 1, arrivals are thinned at random. Time
    is never compressed: a one-hour trace stays one hour.
    """
    if not np.isfinite(factor) or factor <= 0:
        raise TraceError(f"invalid rate scale {factor!r}: must be a positive number")
    if not np.isfinite(jitter_s) or jitter_s < 0:
        raise TraceError(f"invalid jitter {jitter_s!r}: must be a number of seconds >= 0")
    if factor == 1:
        return trace
    rng = np.random.default_rng(seed)
    count = trace.requests
    parts_time, parts_isl, parts_osl = [], [], []
    copies = int(np.floor(factor))
    fraction = factor - copies
    for copy in range(copies + (1 if fraction > 0 else 0)):
        keep = np.ones(count, bool) if copy < copies else rng.random(count) < fraction
        jitter = 0.0 if copy == 0 else rng.uniform(-jitter_s, jitter_s, count)
        shifted = _reflect(trace.arrival_s + jitter, trace.duration_s)
        parts_time.append(shifted[keep])
        parts_isl.append(trace.isl[keep])
        parts_osl.append(trace.osl[keep])
    arrival = np.concatenate(parts_time)
    order = np.argsort(arrival, kind="stable")
    name = f"{trace.name} x{factor:g}"
    return Trace(name, arrival[order], np.concatenate(parts_isl)[order], np.concatenate(parts_osl)[order], trace.duration_s)


def _reflect(times: np.ndarray, duration_s: float) -> np.ndarray:
    """Fold times outside [0, duration] back inside, so the ends get no pile of clipped arrivals."""
    if duration_s <= 0:
        return np.zeros_like(times)
    period = 2 * duration_s
    folded = np.mod(times, period)
    return np.where(folded > duration_s, period - folded, folded)


def scale_shape(shape: RateShape, factor: float) -> RateShape:
    if not np.isfinite(factor) or factor <= 0:
        raise TraceError(f"invalid rate scale {factor!r}: must be a positive number")
    return RateShape(f"{shape.name} x{factor:g}", shape.time_s, shape.rate * factor, shape.window_s)


def _read_rate_file(file: Path) -> list[tuple[float, float]]:
    rows = []
    with _open(file) as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            if len(row) != 6:
                raise TraceError(f"{file}:{line}: expected 6 columns (timestamp_s, rate, cv, pattern, shape, scale), got {len(row)}")
            try:
                time_s = float(row[0])
                rate = float(row[1])
            except ValueError:
                time_s = _parse_number(row[0], "timestamp_s", file, line)
                rate = _parse_number(row[1], "rate", file, line)
            if not (math.isfinite(time_s) and math.isfinite(rate)):
                raise TraceError(f"{file}:{line}: timestamp_s and rate must be finite numbers, got {row[0]!r}, {row[1]!r}")
            if rate < 0:
                raise TraceError(f"{file}:{line}: rate is {rate}, expected >= 0 requests/s")
            rows.append((time_s, rate))
    return rows


def _not_utf8(path: Path, error: UnicodeDecodeError) -> TraceError:
    # The decoder's offset counts from the start of its read buffer, not of the file, so it is left out.
    return TraceError(f"{path}: not UTF-8 text (invalid byte 0x{error.object[error.start]:02x}); save the trace as UTF-8")


def _open(path: Path):
    try:
        return path.open(encoding="utf-8", newline="")
    except OSError as error:
        raise TraceError(f"{path}: cannot read file: {error.strerror}") from None


def _first_line(path: Path) -> str:
    with _open(path) as handle:
        return handle.readline().strip()


def _parse_azure_timestamp(text: str, path: Path, line: int) -> float:
    match = _AZURE_TIMESTAMP.match(text)
    if match is None:
        raise TraceError(f"{path}:{line}: invalid TIMESTAMP {text!r}; expected YYYY-MM-DD HH:MM:SS[.fraction][+HH:MM]")
    date, hours, minutes, seconds, fraction, zone = match.groups()
    try:
        day = datetime.fromisoformat(date)
    except ValueError:
        raise TraceError(f"{path}:{line}: invalid date in TIMESTAMP {text!r}") from None
    # Days since 1970 keep seconds near 1e9, where a float64 still resolves 0.1 microseconds.
    value = (day.toordinal() - _EPOCH_ORDINAL) * 86400.0 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    if fraction:
        value += float("0." + fraction)
    if zone and zone != "Z":
        sign = -1 if zone[0] == "+" else 1
        digits = zone[1:].replace(":", "")
        value += sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return value


def _parse_number(value: object, field: str, path: Path, line: int) -> float:
    # JSON true/false would otherwise pass as 1/0.
    if isinstance(value, bool):
        raise TraceError(f"{path}:{line}: {field} is {json.dumps(value)}, expected a number")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TraceError(f"{path}:{line}: {field} is {value!r}, expected a number") from None
    if not np.isfinite(number):
        raise TraceError(f"{path}:{line}: {field} is {value!r}, expected a finite number")
    return number


def _parse_tokens(value: object, field: str, path: Path, line: int) -> int:
    number = _parse_number(value, field, path, line)
    if number < 0 or number > MAX_TOKENS or number != int(number):
        raise TraceError(f"{path}:{line}: {field} is {value!r}, expected a whole number of tokens from 0 to {MAX_TOKENS}")
    return int(number)


def _make_trace(name: str, times: list[float], isl: list[int], osl: list[int], path: Path) -> Trace:
    if not times:
        raise TraceError(f"{path}: no requests in the file")
    arrival = np.asarray(times, dtype=float)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order] - arrival[order][0]
    if not np.isfinite(arrival[-1]) or arrival[-1] > MAX_DURATION_S:
        first, last = int(order[0]), int(order[-1])
        raise TraceError(
            f"{path}: the requests span {arrival[-1]:.4g} s (request {first + 1} at {times[first]:.6g} s to request "
            f"{last + 1} at {times[last]:.6g} s), more than the maximum {MAX_DURATION_S:.0f} s ({MAX_DURATION_S / 86400:.0f} days); "
            "check the time unit"
        )
    return Trace(
        name=name,
        arrival_s=arrival,
        isl=np.asarray(isl, dtype=np.int64)[order],
        osl=np.asarray(osl, dtype=np.int64)[order],
        duration_s=float(arrival[-1]) if arrival[-1] > 0 else 1.0,
    )
