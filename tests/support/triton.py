"""Fixtures that own a real Triton server (the one in the nvidia-pytriton wheel) for the serving tests.

Registered in tests/conftest.py (``pytest_plugins``): each test module gets one server on
free ports, started after a readiness wait and stopped even when tests fail. The server's log is printed when it
does not start, and on teardown when a test of the module failed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the fixture module is a pytest plugin: importing it here would bypass assertion rewriting
    from tests.support.models import ExportedModel


def require_triton() -> None:
    """Skips (or fails under EQFACE_REQUIRE_SERVICES=1) when the bundled Triton server is not installed."""
    from eqface.serving.launcher import find_distribution

    try:
        find_distribution()
    except FileNotFoundError as exc:
        if os.environ.get("EQFACE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"Triton is required (EQFACE_REQUIRE_SERVICES=1): {exc}")
        pytest.skip(str(exc))


@contextmanager
def running_triton(repository: Path, request: pytest.FixtureRequest | None = None, **options) -> Iterator:
    """A started :class:`TritonServer`; stopped on exit, its log shown if it failed to start or a test failed."""
    from eqface.serving.launcher import TritonServer, TritonStartError

    require_triton()
    server = TritonServer(repository, **options)
    try:
        server.start()
    except TritonStartError as exc:
        pytest.fail(f"Triton did not start: {exc}")
    failed_before = request.session.testsfailed if request else 0
    try:
        yield server
    finally:
        if request is not None and request.session.testsfailed > failed_before:
            print(f"\n--- tritonserver log (last 4000 chars) ---\n{server.logs()[-4000:]}")
        server.stop()


@pytest.fixture(scope="session")
def triton_installed() -> None:
    """Skips the test (or fails it under EQFACE_REQUIRE_SERVICES=1) when the bundled server is missing."""
    require_triton()


@pytest.fixture(scope="session")
def local_repository(mobilefacenet: ExportedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local (python-backend, CPU) repository with MobileFaceNet as version 1, dynamic batching on."""
    from eqface.serving.repository import write_model_repository

    root = tmp_path_factory.mktemp("model_repository")
    write_model_repository(mobilefacenet.onnx_path, root, variant="local")
    return root


@pytest.fixture(scope="module")
def triton_server(local_repository: Path, request: pytest.FixtureRequest):
    """One Triton server per test module on ``local_repository`` (``.grpc_url``, ``.http_url``, ``.metrics_url``)."""
    with running_triton(local_repository, request) as server:
        yield server


@pytest.fixture()
def grpc_client(triton_server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    yield client
    client.close()
