"""The aggregation service as grpcurl sees it: a real server on loopback, discovered through server reflection and
called with JSON, the way an operator debugs it (eqface/service/README.md's commands)."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest

from eqface.service.config import ServiceConfig
from eqface.service.security.config import SecurityConfig
from eqface.service.server import SERVICE_NAME, STORE_HEALTH
from eqface.service.v1 import aggregator_pb2 as pb
from tests.conftest import require_executable
from tests.support.service import ServerThread, aggregator_stub, face_stream, serve_in_thread

pytestmark = pytest.mark.integration
DIM = 64


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    # Reflection is off by default (--reflection turns it on): list and describe need it.
    db = tmp_path_factory.mktemp("grpcurl") / "state.db"
    security = SecurityConfig(insecure=True, reflection=True)
    config = ServiceConfig(store_url=f"sqlite:///{db}", metrics_port=0, embedding_dim=DIM, security=security)
    with serve_in_thread(config) as s:
        yield s


def grpcurl(server: ServerThread, *args: str, data: object | None = None) -> subprocess.CompletedProcess[str]:
    command = [require_executable("grpcurl"), "-plaintext", "-max-time", "20"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    return subprocess.run([*command, server.target, *args], capture_output=True, text=True, timeout=60, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"grpcurl {result.args[1:]} failed ({result.returncode}): {result.stderr}"
    return result.stdout


def b64(vector: np.ndarray) -> str:
    """proto3 JSON spells bytes as base64 (grpcurl prints field names as in the proto); the embedding is raw
    little-endian float32."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()


def test_list_shows_the_service_health_and_reflection(server):
    services = set(ok(grpcurl(server, "list")).split())
    assert services == {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    assert SERVICE_NAME == "eqface.service.v1.AggregatorService"
    methods = ok(grpcurl(server, "list", SERVICE_NAME)).split()
    rpcs = pb.DESCRIPTOR.services_by_name["AggregatorService"].methods
    assert methods == sorted(f"{SERVICE_NAME}.{m.name}" for m in rpcs)  # grpcurl sorts them


def test_describe_shows_the_service_and_the_status_it_imports(server):
    described = ok(grpcurl(server, "describe", SERVICE_NAME))
    assert "service AggregatorService {" in described
    assert (
        "rpc StreamFrames ( stream .eqface.service.v1.StreamFramesRequest ) "
        "returns ( stream .eqface.service.v1.StreamFramesResponse );" in described
    )
    assert "rpc Identify ( .eqface.service.v1.IdentifyRequest ) returns ( .eqface.service.v1.IdentifyResponse );" in (
        described
    )
    # Per-frame errors are google.rpc.Status: reflection serves the imported file too, so a client can decode it.
    result = ok(grpcurl(server, "describe", "eqface.service.v1.FrameResult"))
    assert ".google.rpc.Status error = 13;" in result and 'reserved "error_code";' in result
    status = ok(grpcurl(server, "describe", "google.rpc.Status"))
    assert "int32 code = 1;" in status and "string message = 2;" in status


def test_calls_with_json_enroll_identify_and_an_invalid_frame(server):
    features, qualities = face_stream(7, 4, dim=DIM)
    enrolled = json.loads(
        ok(
            grpcurl(
                server,
                f"{SERVICE_NAME}/Enroll",
                data={
                    "identity_id": "alice",
                    "display_name": "Alice",
                    "embedding": b64(features[0]),
                    "overwrite": True,
                },
            )
        )
    )
    assert enrolled["identity"] == {"identity_id": "alice", "display_name": "Alice"}
    assert int(enrolled["gallery_size"]) == 1
    with aggregator_stub(server.target) as stub:  # grpcurl's Enroll is what the Python client sees
        listed = stub.ListIdentities(pb.ListIdentitiesRequest(), timeout=10).identities
        assert [(i.identity_id, i.display_name) for i in listed] == [("alice", "Alice")]

    found = json.loads(ok(grpcurl(server, f"{SERVICE_NAME}/Identify", data={"embedding": b64(features[1])})))
    best = found["matches"][0]
    assert best["identity_id"] == "alice" and best["display_name"] == "Alice"
    expected = float(features[0] @ features[1] / np.linalg.norm(features[0]) / np.linalg.norm(features[1]))
    assert best["score"] == pytest.approx(expected, abs=1e-5) and best["score"] > 0.9

    frames = [
        {"subject_id": "cam-1", "sequence": "1", "features": {"embedding": b64(features[2]), "quality": 0.9}},
        {"subject_id": "cam-1", "sequence": "2", "features": {"embedding": b64(features[3]), "quality": 1.5}},
    ]
    (answer,) = _json_stream(ok(grpcurl(server, f"{SERVICE_NAME}/StreamFrames", data={"frames": frames})))
    seeded, invalid = answer["results"]
    assert seeded["status"] == "FRAME_STATUS_SEEDED" and "error" not in seeded
    assert invalid["status"] == "FRAME_STATUS_INVALID"
    assert invalid["error"]["code"] == 3 and "outside [0, 1]" in invalid["error"]["message"]  # INVALID_ARGUMENT


def test_health_check(server):
    for name in ("", SERVICE_NAME, STORE_HEALTH):
        data = {"service": name} if name else {}
        answer = json.loads(ok(grpcurl(server, "grpc.health.v1.Health/Check", data=data)))
        assert answer == {"status": "SERVING"}, name
    unknown = grpcurl(server, "grpc.health.v1.Health/Check", data={"service": "eqface.service.v1.Aggregator"})
    assert unknown.returncode != 0 and "NotFound" in unknown.stderr  # the old name is gone


def _json_stream(text: str) -> list[dict]:
    """grpcurl prints each message of a stream as its own JSON document, one after the other."""
    decoder, position, documents = json.JSONDecoder(), 0, []
    text = text.strip()
    while position < len(text):
        document, position = decoder.raw_decode(text, position)
        documents.append(document)
        position += len(text[position:]) - len(text[position:].lstrip())
    return documents
