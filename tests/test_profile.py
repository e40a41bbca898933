"""Profile loading, validation and interpolation against the bundled H200 profile."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from policies.profile import DECODE_FILE, PREFILL_FILE, Profile, ProfileError, bundled_profile_dir


@pytest.fixture(scope="module")
def profile() -> Profile:
    return Profile.load(bundled_profile_dir())


def _copy_with(tmp_path: Path, file: Path, **changes) -> Path:
    """Copy the bundled profile and replace keys of one of its npz files."""
    target = tmp_path / "profile"
    shutil.copytree(bundled_profile_dir(), target)
    with np.load(target / file, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(target / file, **arrays)
    return target


def test_bundled_profile_shapes(profile):
    assert profile.max_kv_tokens == 945029
    assert profile.prefill_isl.size == 17
    assert profile.decode_itl_ms.size == 41
    assert profile.isl_range == (100.0, 16372.0)


@pytest.mark.parametrize(
    ("isl", "ttft_ms"),
    [(100, 19.525209), (3151, 63.214755), (9253, 194.531656), (16372, 375.482618)],
)
def test_prefill_ttft_at_profiled_points(profile, isl, ttft_ms):
    assert profile.prefill_ttft_seconds(isl) == pytest.approx(ttft_ms / 1000, rel=1e-3)


def test_prefill_clamped_outside_range(profile):
    assert profile.prefill_ttft_seconds(1) == profile.prefill_ttft_seconds(100)
    assert profile.prefill_ttft_seconds(100_000) == profile.prefill_ttft_seconds(16372)
    assert profile.prefill_throughput_per_gpu(1) == pytest.approx(5121.58410187, rel=1e-3)


def test_prefill_accepts_arrays(profile):
    values = profile.prefill_ttft_seconds(np.array([100.0, 16372.0]))
    assert values.shape == (2,)
    assert values[1] == pytest.approx(0.375482618, rel=1e-3)


@pytest.mark.parametrize(
    ("kv_usage", "context", "itl_ms", "thpt"),
    [
        (0.155395231, 2997, 9.93745249, 4810.70924611),
        (0.482530166, 8291, 19.8337406, 2717.72034092),
        (0.330630065, 13585, 15.79361639, 1432.07666927),
    ],
)
def test_decode_near_profiled_points(profile, kv_usage, context, itl_ms, thpt):
    # The grid has 100 cells per axis, so a profiled point sits up to half a cell from a node.
    assert profile.decode_itl_seconds(kv_usage, context) == pytest.approx(itl_ms / 1000, rel=0.08)
    assert profile.decode_throughput_per_gpu(kv_usage, context) == pytest.approx(thpt, rel=0.08)


def test_decode_array_matches_scalar(profile):
    kv = np.array([0.1, 0.5, 0.9])
    context = np.array([1000.0, 5000.0, 12000.0])
    values = profile.decode_itl_seconds(kv, context)
    for index in range(3):
        assert values[index] == pytest.approx(profile.decode_itl_seconds(kv[index], context[index]))


def test_decode_itl_grows_with_load(profile):
    light = profile.decode_itl_seconds(0.05, 5644)
    heavy = profile.decode_itl_seconds(0.9, 5644)
    assert heavy > 3 * light


def test_best_decode_meets_target(profile):
    throughput, kv_usage = profile.best_decode_throughput_per_gpu(0.02, 5644)
    assert profile.decode_itl_seconds(kv_usage, 5644) <= 0.02 * 1.05
    assert 0.3 < kv_usage < 0.7
    assert 3000 < throughput < 4500


def test_best_decode_unreachable_target_returns_lowest_load(profile):
    throughput, kv_usage = profile.best_decode_throughput_per_gpu(0.0001, 5644)
    assert kv_usage == 0.0
    assert throughput >= 0


def test_best_decode_rejects_bad_target(profile):
    with pytest.raises(ValueError, match="itl_target_seconds"):
        profile.best_decode_throughput_per_gpu(0.0, 1000)


def test_missing_directory(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        Profile.load(tmp_path / "absent")


def test_missing_key_names_file_and_key(tmp_path):
    directory = _copy_with(tmp_path, DECODE_FILE, z_itl=None)
    with pytest.raises(ProfileError, match=r"selected_decode_interpolation.*raw_data\.npz: missing key\(s\) z_itl"):
        Profile.load(directory)


def test_shape_mismatch_names_key(tmp_path):
    directory = _copy_with(tmp_path, PREFILL_FILE, prefill_ttft=np.ones(5))
    with pytest.raises(ProfileError, match="prefill_ttft has 5 values, expected 17"):
        Profile.load(directory)


def test_non_finite_value_names_index(tmp_path):
    itl = np.full(41, 10.0)
    itl[7] = np.nan
    directory = _copy_with(tmp_path, DECODE_FILE, z_itl=itl)
    with pytest.raises(ProfileError, match=r"z_itl\[7\] is nan"):
        Profile.load(directory)


def test_kv_usage_out_of_range(tmp_path):
    kv = np.linspace(0, 1.5, 41)
    directory = _copy_with(tmp_path, DECODE_FILE, x_kv_usage=kv)
    with pytest.raises(ProfileError, match="x_kv_usage.*expected a fraction in 0..1"):
        Profile.load(directory)


def test_bad_max_kv_tokens(tmp_path):
    directory = _copy_with(tmp_path, DECODE_FILE, max_kv_tokens=np.array([0]))
    with pytest.raises(ProfileError, match="max_kv_tokens is 0"):
        Profile.load(directory)


def test_negative_ttft_rejected(tmp_path):
    ttft = np.full(17, 10.0)
    ttft[3] = -1
    directory = _copy_with(tmp_path, PREFILL_FILE, prefill_ttft=ttft)
    with pytest.raises(ProfileError, match=r"prefill_ttft\[3\] is -1.0, expected a value > 0"):
        Profile.load(directory)


def test_pickled_file_rejected(tmp_path):
    directory = _copy_with(tmp_path, PREFILL_FILE)
    np.savez(directory / PREFILL_FILE, prefill_isl=np.array([{"a": 1}], dtype=object),
             prefill_ttft=np.ones(1), prefill_thpt_per_gpu=np.ones(1))
    with pytest.raises(ProfileError, match="prefill_interpolation"):
        Profile.load(directory)


def test_prefill_service_extrapolates_beyond_profile():
    from policies.profile import Profile, bundled_profile_dir

    profile = Profile.load(bundled_profile_dir())
    low, high = profile.isl_range
    assert profile.prefill_service_seconds(low) == profile.prefill_ttft_seconds(low)
    assert profile.prefill_service_seconds(high) == profile.prefill_ttft_seconds(high)
    # Ten times the longest profiled input takes ten times as long, where the planner's lookup clamps.
    assert profile.prefill_service_seconds(10 * high) == pytest.approx(10 * profile.prefill_ttft_seconds(high))
    assert profile.prefill_ttft_seconds(10 * high) == profile.prefill_ttft_seconds(high)
    array = profile.prefill_service_seconds(np.array([high, 4 * high]))
    assert array[1] == pytest.approx(4 * array[0])


def test_profile_path_is_file(tmp_path):
    path = tmp_path / "profile.npz"
    path.write_bytes(b"x")
    with pytest.raises(ProfileError, match=f"profile {path} is not a directory"):
        Profile.load(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty; expected an npz \\(zip\\) archive"),
        (b"not a zip archive\n", "not an npz \\(zip\\) archive"),
        (b"\x93NUMPY\x01\x00", "not an npz \\(zip\\) archive"),
    ],
    ids=["empty", "text", "npy header"],
)
def test_npz_not_an_archive(tmp_path, content, message):
    target = tmp_path / "profile"
    shutil.copytree(bundled_profile_dir(), target)
    (target / PREFILL_FILE).write_bytes(content)
    with pytest.raises(ProfileError, match=f"prefill_interpolation/raw_data\\.npz: {message}"):
        Profile.load(target)


def test_npz_truncated_archive(tmp_path):
    target = tmp_path / "profile"
    shutil.copytree(bundled_profile_dir(), target)
    data = (target / DECODE_FILE).read_bytes()
    (target / DECODE_FILE).write_bytes(data[: len(data) // 2] + data[-22:])
    with pytest.raises(ProfileError, match=r"decode_interpolation/raw_data\.npz"):
        Profile.load(target)
