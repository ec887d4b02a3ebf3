"""The gRPC API's checks: the committed stubs are what scripts/gen_protos.sh generates from proto/, buf lint and buf
breaking hold (and fail on a change they must catch), and invalid frames carry a google.rpc.Status."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from eqface.service.v1 import aggregator_pb2
from tests.conftest import REPO_ROOT, require_executable


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


# ------------------------------------------------------------------------------------------------------------ buf
def _workspace_copy(tmp_path: Path) -> Path:
    """The buf workspace (buf.yaml, proto/, third_party/) in a scratch folder, to try changes on."""
    shutil.copy(REPO_ROOT / "buf.yaml", tmp_path)
    shutil.copytree(REPO_ROOT / "proto", tmp_path / "proto")
    shutil.copytree(REPO_ROOT / "third_party", tmp_path / "third_party")
    return tmp_path


def _buf(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [require_executable("buf"), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


PROTO = Path("proto/eqface/service/v1/aggregator.proto")
BREAKING = ("breaking", "proto", "--against", "proto/breaking-baseline.json")  # scripts/test.sh's command


def test_buf_lint_is_clean_and_wants_a_comment_on_every_element(tmp_path):
    clean = _buf(REPO_ROOT, "lint")
    assert clean.returncode == 0 and clean.stdout == "", clean.stdout + clean.stderr
    workspace = _workspace_copy(tmp_path)
    text = (workspace / PROTO).read_text()
    field = "  // The subject the matches are for.\n  string subject_id = 1;\n"
    assert text.count(field) == 1
    (workspace / PROTO).write_text(text.replace(field, "  string subject_id = 1;\n"))
    uncommented = _buf(workspace, "lint")
    assert uncommented.returncode != 0
    assert 'Field "subject_id" should have a non-empty comment for documentation.' in uncommented.stdout


def test_buf_breaking_passes_against_the_baseline_and_catches_a_break(tmp_path):
    accepted = _buf(REPO_ROOT, *BREAKING)
    assert accepted.returncode == 0 and accepted.stdout == "", accepted.stdout + accepted.stderr
    workspace = _workspace_copy(tmp_path)
    text = (workspace / PROTO).read_text()
    assert text.count("  float score = 2;\n") == 1
    (workspace / PROTO).write_text(text.replace("  float score = 2;\n", "  double score = 2;\n"))
    broken = _buf(workspace, *BREAKING)
    assert broken.returncode != 0
    assert 'changed type from "float" to "double"' in broken.stdout


def test_the_baseline_is_the_api_as_now_accepted():
    """After a refresh (proto/README.md's command) the baseline is the current API: every service, message and
    field of the generated descriptor is in it, so `buf breaking` guards all of them."""
    baseline = json.loads((REPO_ROOT / "proto" / "breaking-baseline.json").read_text())
    (api,) = [f for f in baseline["file"] if f["name"] == aggregator_pb2.DESCRIPTOR.name]
    assert [s["name"] for s in api["service"]] == list(aggregator_pb2.DESCRIPTOR.services_by_name)
    fields = {m["name"]: sorted(f["number"] for f in m.get("field", [])) for m in api["messageType"]}
    generated = {
        name: sorted(f.number for f in message.fields)
        for name, message in aggregator_pb2.DESCRIPTOR.message_types_by_name.items()
    }
    assert fields == generated


# --------------------------------------------------------------------------------------- per-frame google.rpc.Status
def test_invalid_frames_carry_a_google_rpc_status_with_the_domain_code():
    from google.rpc import code_pb2, status_pb2

    from eqface.service import errors
    from eqface.service.aggregator import FrameOutcome, FrameStatus
    from eqface.service.client import frame_error
    from eqface.service.inputs import RawFrame
    from eqface.service.service import MessageResult, invalid_outcome
    from eqface.service.servicer import _response

    accepted = FrameOutcome("s", 1, FrameStatus.REJECTED_QUALITY, 0.1, 0.9, 0.5, 2, 1, 1, "quality 0.100 <= s_th 0.3")
    bad_quality = invalid_outcome(RawFrame("s", 2, embedding=b"", quality=2.0), errors.InvalidArgument("quality 2.0"))
    no_triton = invalid_outcome(RawFrame("s", 3, image=b"x"), errors.FailedPrecondition("image frames need Triton"))
    # an update that failed without a domain error (a ValueError of the QWFA update) is INVALID_ARGUMENT
    dimension = accepted._replace(sequence=4, status=FrameStatus.INVALID, detail="dims 256 != 512", error=None)
    response = _response(MessageResult([accepted, bad_quality, no_triton, dimension], []))
    first, *invalid = response.results

    assert not first.HasField("error") and first.detail == "quality 0.100 <= s_th 0.3" and frame_error(first) is None
    assert [r.status for r in invalid] == [aggregator_pb2.FRAME_STATUS_INVALID] * 3
    assert all(isinstance(r.error, status_pb2.Status) and not r.detail and not r.error.details for r in invalid)
    assert [(r.error.code, r.error.message) for r in invalid] == [
        (code_pb2.INVALID_ARGUMENT, "quality 2.0"),
        (code_pb2.FAILED_PRECONDITION, "image frames need Triton"),
        (code_pb2.INVALID_ARGUMENT, "dims 256 != 512"),
    ]
    assert [frame_error(r) for r in invalid] == [
        (grpc.StatusCode.INVALID_ARGUMENT, "quality 2.0"),
        (grpc.StatusCode.FAILED_PRECONDITION, "image frames need Triton"),
        (grpc.StatusCode.INVALID_ARGUMENT, "dims 256 != 512"),
    ]
    unknown = aggregator_pb2.FrameResult(error=status_pb2.Status(code=99, message="?"))
    assert frame_error(unknown) == (grpc.StatusCode.UNKNOWN, "?")
