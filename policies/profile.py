"""Serving performance from a Dynamo pre-deployment profiling directory.

The directory has the layout the Dynamo SLA planner reads (`--profile-results-dir`):

    <dir>/selected_prefill_interpolation/raw_data.npz
        prefill_isl (tokens), prefill_ttft (ms), prefill_thpt_per_gpu (prefill tokens/s/GPU)
    <dir>/selected_decode_interpolation/raw_data.npz
        x_kv_usage (0..1), y_context_length (tokens, isl + osl/2), z_itl (ms),
        z_thpt_per_gpu (output tokens/s/GPU), max_kv_tokens ([1], tokens)

Interpolation follows the planner. Prefill values come from a cubic 1-D interpolation clamped
to the profiled ISL range. Decode values come from a regular grid over kv usage 0..1 and context
0..max(context), filled by a cubic 2-D interpolation of the scattered points, with the nearest
point filling cells outside their convex hull. The planner reads the grid at the nearest cell,
while this module reads it bilinearly, so the serving model gets no steps. Times in the files are
milliseconds, and every method here uses seconds.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from scipy.interpolate import CloughTocher2DInterpolator, NearestNDInterpolator, interp1d

PREFILL_FILE = Path("selected_prefill_interpolation") / "raw_data.npz"
DECODE_FILE = Path("selected_decode_interpolation") / "raw_data.npz"

# Grid size per axis of the decode tables, the same as the Dynamo planner's default.
DECODE_GRID_RESOLUTION = 100

# Spacing of the dense prefill table that replaces per-call cubic evaluation.
_PREFILL_TABLE_POINTS = 4096

# KV usage up to this much above 1.0 is accepted as rounding in the profiler's output.
_KV_USAGE_TOLERANCE = 1e-6


class ProfileError(ValueError):
    """A profiling directory is missing a file or key, or contains invalid values."""


@dataclass(frozen=True)
class Profile:
    """Prefill and decode performance of one engine configuration, per GPU."""

    directory: Path
    max_kv_tokens: int
    prefill_isl: np.ndarray
    prefill_ttft_ms: np.ndarray
    prefill_thpt_per_gpu: np.ndarray
    decode_kv_usage: np.ndarray
    decode_context: np.ndarray
    decode_itl_ms: np.ndarray
    decode_thpt_per_gpu: np.ndarray
    _tables: _Tables = field(repr=False, compare=False)

    @classmethod
    def load(cls, directory: str | Path) -> Profile:
        """Read and validate both npz files of a profiling directory.

        Raises ProfileError naming the file and key when a file or key is missing, an
        array has the wrong shape, or a value is not finite or out of range.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ProfileError(f"profile {directory} is not a directory; give the profiling directory that contains {PREFILL_FILE.parent}/ and {DECODE_FILE.parent}/")
        if not directory.is_dir():
            raise ProfileError(f"profile directory {directory} not found")
        key = _cache_key(directory)
        if key is not None and key in _LOADED:
            return _LOADED[key]

        prefill_path = directory / PREFILL_FILE
        prefill = _read_npz(prefill_path, ("prefill_isl", "prefill_ttft", "prefill_thpt_per_gpu"))
        isl, ttft, thpt = _validate_prefill(prefill_path, prefill)

        decode_path = directory / DECODE_FILE
        decode = _read_npz(
            decode_path,
            ("x_kv_usage", "y_context_length", "z_itl", "z_thpt_per_gpu", "max_kv_tokens"),
        )
        kv, context, itl, decode_thpt, max_kv_tokens = _validate_decode(decode_path, decode)

        tables = _Tables.build(isl, ttft, thpt, kv, context, itl, decode_thpt)
        profile = cls(
            directory=directory,
            max_kv_tokens=max_kv_tokens,
            prefill_isl=isl,
            prefill_ttft_ms=ttft,
            prefill_thpt_per_gpu=thpt,
            decode_kv_usage=kv,
            decode_context=context,
            decode_itl_ms=itl,
            decode_thpt_per_gpu=decode_thpt,
            _tables=tables,
        )
        if key is not None:
            _LOADED[key] = profile
        return profile

    @property
    def max_context(self) -> float:
        """Largest profiled decode context length, in tokens."""
        return float(self.decode_context.max())

    @property
    def isl_range(self) -> tuple[float, float]:
        """Smallest and largest profiled prefill input length, in tokens."""
        return float(self.prefill_isl[0]), float(self.prefill_isl[-1])

    def prefill_ttft_seconds(self, isl: float) -> float:
        """Time to first token of one request alone on a prefill engine, clamped to the profiled ISL range.

        Accepts a float or a numpy array of input lengths and returns the same kind.
        """
        return self._tables.prefill_lookup(self._tables.prefill_ttft_s, isl)

    def prefill_service_seconds(self, isl: float) -> float:
        """Prefill time of one request alone on an engine, extrapolated beyond the profiled ISL range.

        Inside the range it equals `prefill_ttft_seconds`. Above it, time grows linearly at the
        throughput of the longest profiled input, so a prompt of ten times that length takes ten
        times as long instead of the clamped value. This is an estimate: attention cost grows faster
        than linearly with length, so very long prompts may be slower still. Planner formulas keep
        the clamped lookup, as Dynamo's planner does; the serving model and oracle use this one.
        """
        longest = float(self.prefill_isl[-1])
        clamped = self.prefill_ttft_seconds(isl)
        if isinstance(isl, np.ndarray):
            return np.where(isl > longest, clamped * np.maximum(isl, longest) / longest, clamped)
        return clamped * isl / longest if isl > longest else clamped

    def prefill_throughput_per_gpu(self, isl: float) -> float:
        """Prefill tokens per second per GPU at this input length (float or numpy array)."""
        return self._tables.prefill_lookup(self._tables.prefill_thpt, isl)

    def decode_itl_seconds(self, kv_usage: float, context: float) -> float:
        """Inter-token latency at a KV-cache usage (0..1) and context length (tokens)."""
        return self._tables.decode_lookup(self._tables.decode_itl_s, kv_usage, context)

    def decode_throughput_per_gpu(self, kv_usage: float, context: float) -> float:
        """Output tokens per second per GPU at a KV-cache usage (0..1) and context length (tokens)."""
        return self._tables.decode_lookup(self._tables.decode_thpt, kv_usage, context)

    def best_decode_throughput_per_gpu(self, itl_target_seconds: float, context: float) -> tuple[float, float]:
        """Return (output tokens/s/GPU, kv usage) of the highest-load grid point meeting an ITL target.

        Same rule as the Dynamo planner: in the grid row of this context, walk from kv usage 1
        down and take the first cell whose ITL is at most the target. Interpolated ITL is not
        always monotonic in load, so this is a scan, not a bisection. When no cell meets the
        target, the lowest-load cell is returned.
        """
        if not math.isfinite(itl_target_seconds) or itl_target_seconds <= 0:
            raise ValueError(f"itl_target_seconds must be a positive number, got {itl_target_seconds!r}")
        tables = self._tables
        row = tables.context_row(context)
        itl_row = tables.decode_itl_s[row]
        meeting = np.nonzero(itl_row <= itl_target_seconds)[0]
        column = int(meeting[-1]) if meeting.size else 0
        return float(tables.decode_thpt[row, column]), float(tables.kv_axis[column])


# Loaded profiles by directory and file versions: building the decode grids takes a noticeable
# fraction of a second, and the CLI, the backtest and every profile-based policy load the same one.
_LOADED: dict[tuple, Profile] = {}


def _cache_key(directory: Path) -> tuple | None:
    try:
        stats = [(directory / name).stat() for name in (PREFILL_FILE, DECODE_FILE)]
    except OSError:
        return None
    return (str(directory.resolve()),) + tuple((stat.st_mtime_ns, stat.st_size) for stat in stats)


def bundled_profile_dir() -> Path:
    """Path of the packaged H200 profile (vLLM, Llama-3.1-8B-Instruct-FP8, TP1 prefill and decode)."""
    return Path(str(resources.files("autoscaler.data").joinpath("profiles", "H200_TP1P_TP1D")))


@dataclass(frozen=True)
class _Tables:
    """Precomputed lookup tables: a dense prefill table and the decode grids, in seconds."""

    prefill_isl: np.ndarray
    prefill_ttft_s: np.ndarray
    prefill_thpt: np.ndarray
    kv_axis: np.ndarray
    context_axis: np.ndarray
    decode_itl_s: np.ndarray  # [context row, kv column]
    decode_thpt: np.ndarray

    @classmethod
    def build(cls, isl, ttft, thpt, kv, context, itl, decode_thpt) -> _Tables:
        dense_isl = np.linspace(isl[0], isl[-1], _PREFILL_TABLE_POINTS)
        kind = "cubic" if isl.size >= 4 else "linear"
        dense_ttft = interp1d(isl, ttft, kind=kind)(dense_isl) / 1000.0
        dense_thpt = interp1d(isl, thpt, kind=kind)(dense_isl)

        kv_axis = np.linspace(0.0, 1.0, DECODE_GRID_RESOLUTION)
        context_axis = np.linspace(0.0, float(context.max()), DECODE_GRID_RESOLUTION)
        grids = _grid_fill(kv, context, np.column_stack([itl, decode_thpt]), kv_axis, context_axis)
        grid_itl = grids[:, :, 0] / 1000.0
        grid_thpt = grids[:, :, 1]

        # A cubic fit can overshoot below zero between sparse points. No engine has a negative
        # latency or throughput, so values are floored at the smallest profiled value or zero.
        dense_ttft = np.maximum(dense_ttft, float(ttft.min()) / 1000.0)
        dense_thpt = np.maximum(dense_thpt, float(thpt.min()))
        grid_itl = np.maximum(grid_itl, float(itl.min()) / 1000.0)
        grid_thpt = np.maximum(grid_thpt, 0.0)

        return cls(dense_isl, dense_ttft, dense_thpt, kv_axis, context_axis, grid_itl, grid_thpt)

    def prefill_lookup(self, table: np.ndarray, isl):
        values = np.interp(isl, self.prefill_isl, table)
        if np.ndim(values) == 0:
            return float(values)
        return values

    def context_row(self, context: float) -> int:
        step = self.context_axis[1] - self.context_axis[0]
        row = int(context / step) if step > 0 else 0
        return max(0, min(row, self.context_axis.size - 1))

    def decode_lookup(self, grid: np.ndarray, kv_usage, context):
        if np.ndim(kv_usage) == 0 and np.ndim(context) == 0:
            return self._decode_lookup_scalar(grid, float(kv_usage), float(context))
        return self._decode_lookup_array(grid, np.asarray(kv_usage, float), np.asarray(context, float))

    def _decode_lookup_scalar(self, grid: np.ndarray, kv_usage: float, context: float) -> float:
        # Scalar path in plain floats: the serving model calls this once per replica per step.
        last = self.kv_axis.size - 1
        x = min(max(kv_usage, 0.0), 1.0) * last
        y_step = self.context_axis[-1] / last if last else 1.0
        y = min(max(context / y_step, 0.0), float(last)) if y_step > 0 else 0.0
        ix = min(int(x), last - 1)
        iy = min(int(y), last - 1)
        fx = x - ix
        fy = y - iy
        low = grid[iy, ix] * (1 - fx) + grid[iy, ix + 1] * fx
        high = grid[iy + 1, ix] * (1 - fx) + grid[iy + 1, ix + 1] * fx
        return float(low * (1 - fy) + high * fy)

    def _decode_lookup_array(self, grid: np.ndarray, kv_usage: np.ndarray, context: np.ndarray) -> np.ndarray:
        kv_usage, context = np.broadcast_arrays(kv_usage, context)
        last = self.kv_axis.size - 1
        x = np.clip(kv_usage, 0.0, 1.0) * last
        y_step = self.context_axis[-1] / last
        y = np.clip(context / y_step, 0.0, float(last))
        ix = np.minimum(x.astype(int), last - 1)
        iy = np.minimum(y.astype(int), last - 1)
        fx = x - ix
        fy = y - iy
        low = grid[iy, ix] * (1 - fx) + grid[iy, ix + 1] * fx
        high = grid[iy + 1, ix] * (1 - fx) + grid[iy + 1, ix + 1] * fx
        return low * (1 - fy) + high * fy


def _grid_fill(x, y, values, x_axis, y_axis) -> np.ndarray:
    """Interpolate every column of `values` onto the grid: cubic inside the points' hull, nearest outside.

    Returns an array of shape (len(y_axis), len(x_axis), columns). One triangulation serves all columns.
    """
    grid_x, grid_y = np.meshgrid(x_axis, y_axis)
    points = np.column_stack([x, y])
    cubic = CloughTocher2DInterpolator(points, values)(grid_x, grid_y)
    nearest = NearestNDInterpolator(points, values)(grid_x, grid_y)
    return np.where(np.isnan(cubic), nearest, cubic)


def _read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ProfileError(f"profile file {path} not found")
    # np.load reads a file that is not a zip archive as a single array or a pickle, and reports
    # an empty file as EOFError, so the archive format is checked first.
    if path.stat().st_size == 0:
        raise ProfileError(f"{path}: the file is empty; expected an npz (zip) archive")
    if not zipfile.is_zipfile(path):
        raise ProfileError(f"{path}: not an npz (zip) archive")
    try:
        with np.load(path, allow_pickle=False) as data:
            present = set(data.files)
            missing = [key for key in keys if key not in present]
            if missing:
                raise ProfileError(f"{path}: missing key(s) {', '.join(missing)}; found {sorted(present)}")
            return {key: np.asarray(data[key]) for key in keys}
    except ProfileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ProfileError(f"{path}: not a readable npz file without pickled objects: {error}") from error


def _numeric_vector(path: Path, key: str, values: np.ndarray, *, size: int | None = None) -> np.ndarray:
    if values.ndim != 1 or values.size == 0:
        raise ProfileError(f"{path}: key {key} must be a non-empty 1-D array, got shape {values.shape}")
    if size is not None and values.size != size:
        raise ProfileError(f"{path}: key {key} has {values.size} values, expected {size} like the other keys")
    if not np.issubdtype(values.dtype, np.number):
        raise ProfileError(f"{path}: key {key} must be numeric, got dtype {values.dtype}")
    values = values.astype(float)
    bad = np.nonzero(~np.isfinite(values))[0]
    if bad.size:
        raise ProfileError(f"{path}: key {key}[{bad[0]}] is {values[bad[0]]}, expected a finite number")
    return values


def _require_positive(path: Path, key: str, values: np.ndarray) -> None:
    bad = np.nonzero(values <= 0)[0]
    if bad.size:
        raise ProfileError(f"{path}: key {key}[{bad[0]}] is {values[bad[0]]}, expected a value > 0")


def _validate_prefill(path: Path, data: dict[str, np.ndarray]):
    isl = _numeric_vector(path, "prefill_isl", data["prefill_isl"])
    ttft = _numeric_vector(path, "prefill_ttft", data["prefill_ttft"], size=isl.size)
    thpt = _numeric_vector(path, "prefill_thpt_per_gpu", data["prefill_thpt_per_gpu"], size=isl.size)
    if isl.size < 2:
        raise ProfileError(f"{path}: key prefill_isl has {isl.size} point, at least 2 are needed to interpolate")
    for key, values in (("prefill_isl", isl), ("prefill_ttft", ttft), ("prefill_thpt_per_gpu", thpt)):
        _require_positive(path, key, values)

    order = np.argsort(isl, kind="stable")
    isl, ttft, thpt = isl[order], ttft[order], thpt[order]
    repeated = np.nonzero(np.diff(isl) == 0)[0]
    if repeated.size:
        raise ProfileError(f"{path}: key prefill_isl repeats the value {isl[repeated[0]]}; each ISL must appear once")
    return isl, ttft, thpt


def _validate_decode(path: Path, data: dict[str, np.ndarray]):
    kv = _numeric_vector(path, "x_kv_usage", data["x_kv_usage"])
    context = _numeric_vector(path, "y_context_length", data["y_context_length"], size=kv.size)
    itl = _numeric_vector(path, "z_itl", data["z_itl"], size=kv.size)
    thpt = _numeric_vector(path, "z_thpt_per_gpu", data["z_thpt_per_gpu"], size=kv.size)

    out_of_range = np.nonzero((kv < 0) | (kv > 1 + _KV_USAGE_TOLERANCE))[0]
    if out_of_range.size:
        index = out_of_range[0]
        raise ProfileError(f"{path}: key x_kv_usage[{index}] is {kv[index]}, expected a fraction in 0..1")
    _require_positive(path, "y_context_length", context)
    _require_positive(path, "z_itl", itl)
    negative = np.nonzero(thpt < 0)[0]
    if negative.size:
        raise ProfileError(f"{path}: key z_thpt_per_gpu[{negative[0]}] is {thpt[negative[0]]}, expected >= 0")
    if kv.size < 4 or np.unique(context).size < 2 or np.unique(kv).size < 2:
        raise ProfileError(
            f"{path}: decode points must span at least 2 kv usages and 2 context lengths "
            f"(4 points or more) for a 2-D interpolation, got {kv.size} points"
        )

    raw_max_kv = data["max_kv_tokens"]
    if raw_max_kv.size != 1 or not np.issubdtype(raw_max_kv.dtype, np.number):
        raise ProfileError(
            f"{path}: key max_kv_tokens must hold one number, got shape {raw_max_kv.shape} dtype {raw_max_kv.dtype}"
        )
    max_kv_value = float(raw_max_kv.reshape(-1)[0])
    if not math.isfinite(max_kv_value) or max_kv_value < 1 or max_kv_value != int(max_kv_value):
        raise ProfileError(f"{path}: key max_kv_tokens is {max_kv_value}, expected a positive whole number of tokens")
    return kv, context, itl, thpt, int(max_kv_value)
