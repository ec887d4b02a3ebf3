"""The committed gRPC stubs are what scripts/gen_protos.sh generates from proto/ (the CI check, runnable locally)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def test_generated_stubs_are_up_to_date_and_marked():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev dependency) regenerates the stubs")
    script = REPO_ROOT / "scripts" / "gen_protos.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run([str(script), "--check"], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    stubs = sorted((REPO_ROOT / "eqface" / "service" / "v1").glob("aggregator_pb2*"))
    assert [p.name for p in stubs] == ["aggregator_pb2.py", "aggregator_pb2.pyi", "aggregator_pb2_grpc.py"]
    for stub in stubs:
        assert "DO NOT EDIT" in stub.read_text().splitlines()[0] + stub.read_text().splitlines()[1]


def test_proto_package_path_equals_the_python_package_path():
    from eqface.service.v1 import aggregator_pb2

    assert aggregator_pb2.DESCRIPTOR.package == "eqface.service.v1"
    assert aggregator_pb2.DESCRIPTOR.name == "eqface/service/v1/aggregator.proto"
    assert (REPO_ROOT / "proto" / aggregator_pb2.DESCRIPTOR.name).is_file()
