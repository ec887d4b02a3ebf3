"""Shared pytest set-up: where the real data lives, and whether missing services may skip tests.

CI sets EQFACE_REQUIRE_SERVICES=1: a test whose external component (redis-server, prometheus, Triton) is missing then
fails instead of skipping, so a broken CI image cannot pass by skipping the integration suite.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from eqface import paths

REPO_ROOT = Path(__file__).resolve().parents[1]

# Fixtures shared by several modules: trained/exported tiny models, a real Triton server per module.
pytest_plugins = ["tests.support.models", "tests.support.triton"]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = paths.shared_data_dir()
    if path is None:
        if os.environ.get("EQFACE_REQUIRE_DATA") == "1":
            pytest.fail("EQFACE_REQUIRE_DATA=1 but ../shared/data is missing")
        pytest.skip("real face data (../shared/data) is not present on this machine")
    return path


def require_executable(name: str) -> str:
    """Path of an external program a test needs; skips (or fails under EQFACE_REQUIRE_SERVICES=1) when missing.

    A program that a dev-extra wheel puts beside this interpreter (buf, grpcurl: .venv/bin) is found there too,
    whether or not the venv is on PATH.
    """
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        if os.environ.get("EQFACE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{name} is required (EQFACE_REQUIRE_SERVICES=1) but not installed")
        pytest.skip(f"{name} is not installed")
    return path


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "no tests collected" must never pass silently (pytest already exits 5; make any filter that empties a run fail).
    if session.testscollected == 0 and exitstatus == 0:
        session.exitstatus = 1
