"""Shared fixtures. Each real component has its own plugin module under tests/fixtures/."""

import os
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.kube",
    "tests.fixtures.prometheus",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GROVE_AUTOSCALER_SHARED", PROJECT_ROOT.parent / "shared"))


def require_binary(name: str) -> str:
    """Return the path of a binary; fail under CI and skip elsewhere when it is missing."""
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"{name} binary not found on PATH (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED}; set GROVE_AUTOSCALER_SHARED")
    return SHARED
