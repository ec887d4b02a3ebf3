"""The aggregation service over real gRPC on localhost (feature mode, SQLite and Redis stores)."""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from eqface.aggregation import progressive_templates
from eqface.processes import free_port
from eqface.service.client import embedding_bytes, feature_frame, frame_error, image_frame, template_of
from eqface.service.config import MiB, ServiceConfig
from eqface.service.security.config import SecurityConfig
from eqface.service.server import SERVICE_NAME, STORE_HEALTH
from eqface.service.v1 import aggregator_pb2 as pb
from tests.conftest import require_executable
from tests.support.service import (  # noqa: F401  (fixtures)
    ServerThread,
    StreamSession,
    aggregator_stub,
    face_stream,
    health_status,
    redis_server,
    serve_in_thread,
    store_url,
)

pytestmark = pytest.mark.integration
CODE = {c: c.value[0] for c in grpc.StatusCode}


def _config(url: str, **kw) -> ServiceConfig:
    return ServiceConfig(store_url=url, **{"metrics_port": 0, **kw})


@pytest.fixture
def server(store_url: str) -> Iterator[ServerThread]:  # noqa: F811
    with serve_in_thread(_config(store_url, max_frames_per_message=256)) as s:
        yield s


@pytest.fixture
def stub(server: ServerThread):
    with aggregator_stub(server.target) as s:
        yield s


def _request(subject: str, features: np.ndarray, qualities: np.ndarray, first_seq: int = 1, top_k: int = 0):
    frames = [feature_frame(subject, first_seq + i, f, float(q)) for i, (f, q) in enumerate(zip(features, qualities))]
    return pb.StreamFramesRequest(frames=frames, top_k=top_k)


def _state(stub, subject: str) -> pb.SubjectState:
    return stub.GetTemplate(pb.GetTemplateRequest(subject_id=subject)).subject


def test_batched_stream_of_several_subjects_matches_offline_aggregation(stub):
    streams = {f"cam1/track{i}": face_stream(i, 64) for i in range(3)}
    requests = []
    for start in range(0, 64, 16):  # each message carries 16 frames of each of the 3 subjects
        frames = []
        for sid, (f, q) in streams.items():
            frames += _request(sid, f[start : start + 16], q[start : start + 16], start + 1).frames
        requests.append(pb.StreamFramesRequest(frames=frames))
    responses = list(stub.StreamFrames(iter(requests), timeout=30))
    assert len(responses) == 4 and all(len(r.results) == 48 for r in responses)
    first = responses[0].results[0]
    assert first.status == pb.FRAME_STATUS_SEEDED and not first.HasField("similarity") and first.frame_count == 1
    for sid, (f, q) in streams.items():
        results = [r for resp in responses for r in resp.results if r.subject_id == sid]
        assert [r.sequence for r in results] == list(range(1, 65))
        assert all(r.HasField("similarity") for r in results[1:])
        np.testing.assert_allclose([r.quality for r in results], q, atol=1e-7)
        expected = progressive_templates(f, q)
        state = _state(stub, sid)
        np.testing.assert_allclose(template_of(state), expected[-1], atol=1e-5)
        assert state.frame_count == 64 and state.last_sequence == 64 and state.dimension == 512
        assert results[-1].s_sum == pytest.approx(state.s_sum) and results[-1].accepted_count == state.accepted_count
        merged = sum(r.accepted for r in results)
        assert merged == state.accepted_count
        reasons = {r.status for r in results if not r.accepted}
        assert reasons <= {pb.FRAME_STATUS_REJECTED_QUALITY, pb.FRAME_STATUS_REJECTED_SIMILARITY}
        assert all(r.detail for r in results if not r.accepted)


def test_replays_are_duplicates_and_reset_and_delete_semantics(stub):
    f, q = face_stream(1, 6, low=0.5)
    stub.StreamFrames(iter([_request("s", f[:4], q[:4])])).next()
    (replay,) = stub.StreamFrames(iter([_request("s", f[2:5], q[2:5], first_seq=3)]))
    statuses = [r.status for r in replay.results]
    assert statuses[:2] == [pb.FRAME_STATUS_DUPLICATE] * 2 and statuses[2] != pb.FRAME_STATUS_DUPLICATE
    assert replay.results[0].last_sequence == 4 and "not applied" in replay.results[0].detail
    assert _state(stub, "s").frame_count == 5

    reset = stub.ResetSubject(pb.ResetSubjectRequest(subject_id="s")).subject
    assert reset.template == b"" and reset.frame_count == 0 and reset.last_sequence == 0
    (after,) = stub.StreamFrames(iter([_request("s", f[:1], q[:1], first_seq=1)]))
    assert after.results[0].status == pb.FRAME_STATUS_SEEDED  # the reset cleared the sequence: 1 starts again
    assert after.results[0].last_sequence == 1

    stub.DeleteSubject(pb.DeleteSubjectRequest(subject_id="s"))
    with pytest.raises(grpc.RpcError) as err:
        _state(stub, "s")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    (fresh,) = stub.StreamFrames(iter([_request("s", f[:1], q[:1], first_seq=1)]))
    assert fresh.results[0].status == pb.FRAME_STATUS_SEEDED  # deleting forgot the sequence too


def test_invalid_frames_are_answered_one_by_one_and_change_nothing(stub):
    f, q = face_stream(2, 3, low=0.5)
    stub.StreamFrames(iter([_request("s", f[:1], q[:1])])).next()
    before = _state(stub, "s")
    good = feature_frame("s", 2, f[1], float(q[1]))
    bad = [
        pb.Frame(subject_id="s", sequence=3, features=pb.Features(embedding=b"\x00" * 100, quality=0.5)),
        feature_frame("s", 4, np.full(512, np.nan), 0.5),
        feature_frame("s", 5, np.r_[np.ones(511), np.inf], 0.5),
        feature_frame("s", 6, f[2], 1.5),
        feature_frame("s", 7, f[2], float("nan")),
        feature_frame("", 8, f[2], 0.5),
        feature_frame("s", 0, f[2], 0.5),
        pb.Frame(subject_id="s", sequence=9),
        image_frame("s", 10, b"\xff\xd8\xff"),  # no Triton configured in this server
    ]
    (response,) = stub.StreamFrames(iter([pb.StreamFramesRequest(frames=[good, *bad])]))
    results = response.results
    assert results[0].status == pb.FRAME_STATUS_ACCEPTED and results[0].frame_count == 2
    messages = [
        "bytes; expected 2048",
        "NaN or inf",
        "NaN or inf",
        "outside [0, 1]",
        "quality is nan",
        "subject_id is empty",
        "sequence 0 is outside [1, 2^63 - 1]",
        "neither",
        "need Triton",
    ]
    assert frame_error(results[0]) is None and not results[0].HasField("error")
    for result, message in zip(results[1:], messages):
        assert result.status == pb.FRAME_STATUS_INVALID and not result.accepted
        # the reason is a google.rpc.Status (code + message), not the free-text detail of rejections
        assert message in result.error.message and not result.detail and not result.error.details
    assert [r.error.code for r in results[1:]] == [CODE[grpc.StatusCode.INVALID_ARGUMENT]] * 8 + [
        CODE[grpc.StatusCode.FAILED_PRECONDITION]
    ]
    assert [frame_error(r)[0] for r in results[-2:]] == [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    ]
    assert frame_error(results[-1])[1] == results[-1].error.message
    after = _state(stub, "s")
    assert after.frame_count == before.frame_count + 1 and after.last_sequence == 2  # only the good frame counted


def test_too_many_frames_ends_only_that_stream(stub, server):
    other = StreamSession(stub)
    f, q = face_stream(3, 300)
    assert other.exchange(_request("other", f[:2], q[:2])).results[1].sequence == 2
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamFrames(iter([_request("big", f[:257], q[:257])])))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit is 256" in err.value.details()
    with pytest.raises(grpc.RpcError):
        _state(stub, "big")
    assert other.exchange(_request("other", f[2:4], q[2:4], first_seq=3)).results[1].frame_count == 4
    other.close()


def test_huge_message_is_resource_exhausted_and_other_streams_continue(tmp_path):
    config = _config(f"sqlite:///{tmp_path}/s.db", max_message_bytes=MiB)
    with serve_in_thread(config) as server, aggregator_stub(server.target) as stub:
        other = StreamSession(stub)
        f, q = face_stream(4, 600)
        assert other.exchange(_request("other", f[:1], q[:1])).results[0].status == pb.FRAME_STATUS_SEEDED
        with pytest.raises(grpc.RpcError) as err:  # 600 x 2 KiB embeddings > 1 MiB
            list(stub.StreamFrames(iter([_request("huge", f, q)]), timeout=10))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as err:
            stub.Identify(pb.IdentifyRequest(embedding=b"\x00" * (2 * MiB)), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert other.exchange(_request("other", f[1:2], q[1:2], first_seq=2)).results[0].frame_count == 2
        assert other.close() == []
        with pytest.raises(grpc.RpcError):
            _state(stub, "huge")


def test_unary_errors_have_the_right_codes(stub):
    f, q = face_stream(5, 2, low=0.5)
    stub.StreamFrames(iter([_request("s", f, q)])).next()
    embedding = embedding_bytes(f[0])
    infinite = embedding_bytes(np.full(512, np.inf))
    images = pb.ImageSet(images=[b"jpeg"])
    cases = [
        (stub.GetTemplate, pb.GetTemplateRequest(subject_id="nobody"), grpc.StatusCode.NOT_FOUND),
        (stub.GetTemplate, pb.GetTemplateRequest(subject_id=""), grpc.StatusCode.INVALID_ARGUMENT),
        (stub.ResetSubject, pb.ResetSubjectRequest(subject_id="nobody"), grpc.StatusCode.NOT_FOUND),
        (stub.DeleteSubject, pb.DeleteSubjectRequest(subject_id="nobody"), grpc.StatusCode.NOT_FOUND),
        (stub.ListSubjects, pb.ListSubjectsRequest(page_token="%%"), grpc.StatusCode.INVALID_ARGUMENT),
        (stub.ListSubjects, pb.ListSubjectsRequest(page_size=5000), grpc.StatusCode.INVALID_ARGUMENT),
        (stub.Identify, pb.IdentifyRequest(embedding=embedding[:-4]), grpc.StatusCode.INVALID_ARGUMENT),
        (stub.Identify, pb.IdentifyRequest(embedding=infinite), grpc.StatusCode.INVALID_ARGUMENT),
        (stub.Identify, pb.IdentifyRequest(subject_id="nobody"), grpc.StatusCode.NOT_FOUND),
        (stub.Identify, pb.IdentifyRequest(embedding=embedding, top_k=1000), grpc.StatusCode.INVALID_ARGUMENT),
        (stub.Identify, pb.IdentifyRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (stub.Enroll, pb.EnrollRequest(identity_id="x", images=images), grpc.StatusCode.FAILED_PRECONDITION),
        (stub.Enroll, pb.EnrollRequest(identity_id="x\n", embedding=embedding), grpc.StatusCode.INVALID_ARGUMENT),
        (stub.Enroll, pb.EnrollRequest(identity_id="x", subject_id="nobody"), grpc.StatusCode.NOT_FOUND),
        (stub.RemoveIdentity, pb.RemoveIdentityRequest(identity_id="nobody"), grpc.StatusCode.NOT_FOUND),
    ]
    for method, request, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            method(request, timeout=10)
        assert err.value.code() == code, (request, err.value.details())
        assert err.value.details()  # always a message
    stub.Enroll(pb.EnrollRequest(identity_id="x", embedding=embedding))
    with pytest.raises(grpc.RpcError) as err:
        stub.Enroll(pb.EnrollRequest(identity_id="x", embedding=embedding))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    stub.ResetSubject(pb.ResetSubjectRequest(subject_id="s"))
    with pytest.raises(grpc.RpcError) as err:
        stub.Enroll(pb.EnrollRequest(identity_id="y", subject_id="s"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no template" in err.value.details()
    assert _state(stub, "s").last_sequence == 0  # the reset cleared it; the failed Enroll changed nothing


def test_gallery_enroll_identify_and_matches_in_the_stream(stub):
    people = {name: face_stream(20 + i, 12, low=0.5) for i, name in enumerate(["ann", "bob", "cyd"])}
    for name, (f, q) in people.items():
        stub.StreamFrames(iter([_request(f"track-{name}", f[:6], q[:6])])).next()
        request = pb.EnrollRequest(identity_id=name, display_name=name.title(), subject_id=f"track-{name}")
        response = stub.Enroll(request)
    assert response.gallery_size == 3
    f, q = people["bob"]
    (reply,) = stub.StreamFrames(iter([_request("track-bob", f[6:], q[6:], first_seq=7, top_k=2)]))
    (subject_matches,) = reply.matches
    assert subject_matches.subject_id == "track-bob" and len(subject_matches.matches) == 2
    best = subject_matches.matches[0]
    assert (best.identity_id, best.display_name) == ("bob", "Bob") and best.score > 0.9
    assert best.score > subject_matches.matches[1].score

    by_subject = stub.Identify(pb.IdentifyRequest(subject_id="track-cyd", top_k=3))
    assert [m.identity_id for m in by_subject.matches][0] == "cyd" and len(by_subject.matches) == 3
    by_embedding = stub.Identify(pb.IdentifyRequest(embedding=embedding_bytes(people["ann"][0][-1])))
    assert by_embedding.matches[0].identity_id == "ann" and by_embedding.gallery_size == 3

    page = stub.ListIdentities(pb.ListIdentitiesRequest(page_size=2))
    rest = stub.ListIdentities(pb.ListIdentitiesRequest(page_size=2, page_token=page.next_page_token))
    assert [i.identity_id for i in [*page.identities, *rest.identities]] == ["ann", "bob", "cyd"]
    assert rest.next_page_token == ""
    assert stub.RemoveIdentity(pb.RemoveIdentityRequest(identity_id="bob")).gallery_size == 2
    assert stub.Identify(pb.IdentifyRequest(subject_id="track-bob")).matches[0].identity_id != "bob"
    replaced = stub.Enroll(pb.EnrollRequest(identity_id="ann", subject_id="track-bob", overwrite=True))
    assert replaced.gallery_size == 2
    assert stub.Identify(pb.IdentifyRequest(subject_id="track-bob")).matches[0].identity_id == "ann"


def test_list_subjects_pages(stub):
    f, q = face_stream(6, 1)
    ids = [f"sub{i:02d}" for i in range(7)]
    stub.StreamFrames(iter([pb.StreamFramesRequest(frames=[feature_frame(i, 1, f[0], 0.9) for i in ids])])).next()
    seen, token = [], ""
    while True:
        page = stub.ListSubjects(pb.ListSubjectsRequest(page_size=3, page_token=token))
        seen += page.subject_ids
        token = page.next_page_token
        if not token:
            break
    assert seen == ids


def test_calls_past_their_deadline_are_not_applied(stub, server):
    f, q = face_stream(7, 4, low=0.5)
    stub.StreamFrames(iter([_request("s", f[:2], q[:2])])).next()
    service = server.server.service

    def block_store_thread(seconds: float) -> None:
        # Occupy the store thread (as a long commit would) so that the next calls wait past their deadline.
        server.loop.call_soon_threadsafe(lambda: server.loop.create_task(service.io(time.sleep, seconds)))
        time.sleep(0.05)

    block_store_thread(0.6)
    with pytest.raises(grpc.RpcError) as err:
        stub.ResetSubject(pb.ResetSubjectRequest(subject_id="s"), timeout=0.2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    block_store_thread(0.6)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamFrames(iter([_request("s", f[2:], q[2:], first_seq=3)]), timeout=0.2))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.7)
    state = _state(stub, "s")
    assert state.frame_count == 2 and state.last_sequence == 2  # neither the reset nor the frames were applied


def test_concurrent_streams(stub):
    streams = {f"c{i}": face_stream(40 + i, 40) for i in range(6)}
    errors: list[BaseException] = []

    def run(sid: str) -> None:
        try:
            f, q = streams[sid]
            requests = (_request(sid, f[i : i + 5], q[i : i + 5], i + 1) for i in range(0, 40, 5))
            list(stub.StreamFrames(requests, timeout=30))
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(sid,)) for sid in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for sid, (f, q) in streams.items():
        np.testing.assert_allclose(template_of(_state(stub, sid)), progressive_templates(f, q)[-1], atol=1e-5)


def test_health_and_reflection(server, tmp_path):
    """Health is served; reflection only when enabled (it is off by default: it lists the API to anyone)."""
    assert health_status(server.target) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(server.target, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(server.target, STORE_HEALTH) == health_pb2.HealthCheckResponse.SERVING
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as off:
            ProtoReflectionDescriptorDatabase(channel).get_services()
        assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED
    security = SecurityConfig(insecure=True, reflection=True)
    with serve_in_thread(_config(f"sqlite:///{tmp_path}/r.db", security=security)) as on:
        with grpc.insecure_channel(on.target) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = set(database.get_services())
            assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
            service = DescriptorPool(database).FindServiceByName(SERVICE_NAME)
            methods = {m.name for m in service.methods}
            assert {"StreamFrames", "GetTemplate", "Enroll", "Identify", "ListSubjects", "RemoveIdentity"} <= methods


def test_metrics_pass_promtool_and_count_frames(tmp_path):
    promtool = require_executable("promtool")
    with serve_in_thread(_config(f"sqlite:///{tmp_path}/m.db")) as server:
        assert server.server.metrics_port is None  # metrics_port=0 disables the endpoint
    config = _config(f"sqlite:///{tmp_path}/m.db", metrics_port=free_port())
    with serve_in_thread(config) as server, aggregator_stub(server.target) as stub:
        f, q = face_stream(8, 30)
        q[:5] = 0.08
        q[5:] = np.maximum(q[5:], 0.5)
        stub.StreamFrames(iter([_request("m", f, q)])).next()
        stub.StreamFrames(iter([_request("m", f[:3], q[:3])])).next()  # 3 duplicates
        stub.StreamFrames(iter([pb.StreamFramesRequest(frames=[feature_frame("m", 99, f[0], 2.0)])])).next()
        stub.Enroll(pb.EnrollRequest(identity_id="m", subject_id="m"))
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=5).read()
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check
    samples = _samples(text.decode())
    frames = {
        r: samples.get(f'eqface_aggregator_frames_total{{result="{r}"}}', 0)
        for r in ("accepted", "rejected_quality", "rejected_similarity", "duplicate", "error")
    }
    assert frames["duplicate"] == 3 and frames["error"] == 1
    assert frames["accepted"] + frames["rejected_quality"] + frames["rejected_similarity"] == 30
    assert frames["rejected_quality"] >= 4  # frames 2-5 (frame 1 seeds)
    assert samples['eqface_aggregator_frame_quality_bucket{le="0.05"}'] == 0
    assert samples['eqface_aggregator_frame_quality_bucket{le="0.1"}'] == 5
    assert samples["eqface_aggregator_frame_quality_count"] == 30
    assert samples["eqface_aggregator_frame_similarity_count"] == 29
    for stage in ("update", "store"):
        assert samples[f'eqface_aggregator_stage_duration_seconds_count{{stage="{stage}"}}'] >= 1
    assert samples["eqface_aggregator_gallery_identities"] == 1
    assert samples["eqface_aggregator_active_subjects"] == 1
    assert samples['eqface_aggregator_dependency_up{dependency="store"}'] == 1


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_store_outage_is_unavailable_not_serving_then_recovers(tmp_path):
    pytest.importorskip("redis")
    from tests.support.service import RedisServer

    redis = RedisServer(tmp_path / "redis").start()
    try:
        with serve_in_thread(_config(redis.url("outage:"))) as server, aggregator_stub(server.target) as stub:
            f, q = face_stream(9, 6, low=0.5)
            stub.StreamFrames(iter([_request("s", f[:2], q[:2])])).next()
            redis.stop()
            with pytest.raises(grpc.RpcError) as err:
                list(stub.StreamFrames(iter([_request("s", f[2:4], q[2:4], first_seq=3)]), timeout=10))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "store unavailable" in err.value.details()
            _wait_status(server.target, STORE_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
            assert health_status(server.target) == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                _state(stub, "s")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            redis.start(redis.port)  # same port, same append-only file
            _wait_status(server.target, "", health_pb2.HealthCheckResponse.SERVING)
            (response,) = stub.StreamFrames(iter([_request("s", f[2:4], q[2:4], first_seq=3)]), timeout=10)
            assert [r.sequence for r in response.results] == [3, 4]
            assert _state(stub, "s").frame_count == 4  # the frames sent during the outage were not applied
    finally:
        redis.stop()


def _wait_status(target: str, service: str, status: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while health_status(target, service) != status:
        assert time.monotonic() < deadline, f"{service!r} did not become {status}"
        time.sleep(0.05)
