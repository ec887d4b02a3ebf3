"""Image mode against the real Triton server (nvidia-pytriton wheel) serving MobileFaceNet (112x96, 128-d).

The model repository and the exported network come from the serving tests' fixtures (tests.support.models /
tests.support.triton); the faces are real CelebA JPEGs of a few identities. The first tests check the served model's
metadata against the contract without a server.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from grpc_health.v1 import health_pb2

from eqface import contract
from eqface.aggregation import PAPER_F_TH, PAPER_S_TH, Thresholds, progressive_templates, qwfa
from eqface.eval.calibration import CalibrationSettings
from eqface.export.thresholds import calibrate_onnx, pack_faces, write_thresholds
from eqface.service.client import embedding_bytes, feature_frame, image_frame, template_of
from eqface.service.config import ServiceConfig, TritonConfig
from eqface.service.errors import FailedPrecondition
from eqface.service.server import SERVICE_NAME, TRITON_HEALTH
from eqface.service.triton import ServedModel, served_model
from eqface.service.v1 import aggregator_pb2 as pb
from eqface.serving.repository import write_model_repository
from tests.conftest import REPO_ROOT
from tests.support.images import FACE_PACK
from tests.support.service import (
    ServerProcess,
    ServerThread,
    StreamSession,
    TritonProcess,
    aggregator_stub,
    health_status,
    serve_in_thread,
    unit,
    wait_serving,
)

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
OUTPUTS = {contract.EMBEDDING_NAME: [-1, 128], contract.QUALITY_NAME: [-1, 1]}


def test_the_tensor_models_input_size_comes_from_its_metadata():
    inputs = {contract.INPUT_NAME: [-1, 3, 112, 96]}
    served = served_model(contract.ONNX_MODEL_NAME, inputs, OUTPUTS, 128)
    assert served == ServedModel((3, 112, 96), 128) and served.image_size == (112, 96)
    unbatched = served_model(
        contract.ONNX_MODEL_NAME, {contract.INPUT_NAME: [3, 64, 48]}, {k: v[1:] for k, v in OUTPUTS.items()}, 128
    )
    assert unbatched.image_size == (64, 48)
    ensemble = served_model(contract.ENSEMBLE_MODEL_NAME, {contract.IMAGE_BYTES_NAME: [-1, 1]}, OUTPUTS, 128)
    assert ensemble == ServedModel(None, 128) and ensemble.image_size is None


@pytest.mark.parametrize(
    "model, inputs, outputs, message",
    [
        (contract.ONNX_MODEL_NAME, {contract.INPUT_NAME: [-1, 3, 112, 96]}, OUTPUTS, "returns 128-d embeddings but"),
        (contract.ONNX_MODEL_NAME, {contract.INPUT_NAME: [-1, 3, -1, -1]}, OUTPUTS, "sizes must be fixed"),
        (contract.ONNX_MODEL_NAME, {contract.INPUT_NAME: [-1, 1, 112, 96]}, OUTPUTS, "takes 1 channels"),
        (contract.ONNX_MODEL_NAME, {"x": [-1, 3, 112, 96]}, OUTPUTS, "no input 'input'"),
        (contract.ENSEMBLE_MODEL_NAME, {contract.IMAGE_BYTES_NAME: [-1, 1]}, {"embedding": [-1, 128]}, "no output"),
    ],
)
def test_a_served_model_that_disagrees_is_a_clear_error(model, inputs, outputs, message):
    expected_d = 512 if "128-d" in message else 128
    with pytest.raises(FailedPrecondition, match=message):
        served_model(model, inputs, outputs, expected_d)


@pytest.fixture(scope="module")
def people(shared_data: Path) -> dict[str, list[bytes]]:
    """JPEG files of three CelebA identities with at least 12 images each (12 per identity)."""
    with np.load(shared_data / FACE_PACK) as pack:
        blob, offsets, identity = pack["jpeg_bytes"], pack["jpeg_offsets"], pack["identity"]
    ids, counts = np.unique(identity, return_counts=True)
    chosen = ids[counts >= 12][:3]
    return {
        f"person{k}": [blob[offsets[i] : offsets[i + 1]].tobytes() for i in np.flatnonzero(identity == pid)[:12]]
        for k, pid in enumerate(chosen)
    }


@pytest.fixture(scope="module")
def triton(triton_installed, local_repository: Path, tmp_path_factory) -> Iterator[TritonProcess]:
    server = TritonProcess(local_repository, tmp_path_factory.mktemp("triton") / "triton.log")
    try:
        yield server.start()
    finally:
        server.stop()


def _config(tmp_path: Path, triton: TritonProcess, mobilefacenet, **triton_options) -> ServiceConfig:
    return ServiceConfig(
        store_url=f"sqlite:///{tmp_path}/state.db",
        metrics_port=0,
        embedding_dim=mobilefacenet.spec.embedding_size,
        triton=TritonConfig(url=triton.grpc_url, **{"timeout_s": 5.0, "probe_interval_s": 0.2, **triton_options}),
    )


@pytest.fixture
def image_server(tmp_path, triton, mobilefacenet) -> Iterator[ServerThread]:
    with serve_in_thread(_config(tmp_path, triton, mobilefacenet)) as server:
        wait_serving(server.target, 30)
        yield server


def _direct(triton: TritonProcess, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """What Triton itself answers for these images (the reference the service must reproduce)."""
    import tritonclient.grpc as grpcclient

    from eqface.serving.client import infer_images

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        embedding, quality = infer_images(client, images)
    finally:
        client.close()
    return unit(embedding), quality.reshape(-1)


def _stream_images(stub, subject: str, images: list[bytes], per_message: int = 4, first_seq: int = 1):
    requests = [
        pb.StreamFramesRequest(
            frames=[image_frame(subject, first_seq + i + j, b) for j, b in enumerate(images[i : i + per_message])]
        )
        for i in range(0, len(images), per_message)
    ]
    return [r for response in stub.StreamFrames(iter(requests), timeout=60) for r in response.results]


@pytest.mark.integration
@pytest.mark.slow
def test_image_stream_reproduces_triton_and_the_offline_aggregation(image_server, triton, people):
    images = people["person0"]
    embeddings, qualities = _direct(triton, images)
    with aggregator_stub(image_server.target) as stub:
        results = _stream_images(stub, "cam", images)
        state = stub.GetTemplate(pb.GetTemplateRequest(subject_id="cam")).subject
    assert [r.sequence for r in results] == list(range(1, 13))
    assert all(r.status != pb.FRAME_STATUS_INVALID for r in results)
    np.testing.assert_allclose([r.quality for r in results], qualities, atol=1e-5)
    expected = progressive_templates(embeddings, np.clip(qualities, 0, 1))[-1]
    assert state.dimension == 128 and state.frame_count == 12
    np.testing.assert_allclose(template_of(state), expected, atol=1e-4)


@pytest.mark.integration
@pytest.mark.slow
def test_tensor_mode_gives_the_same_results_as_bytes_mode(tmp_path, triton, mobilefacenet, people):
    images = people["person1"]
    embeddings, qualities = _direct(triton, images)
    config = _config(tmp_path, triton, mobilefacenet, input_kind="tensor")
    with serve_in_thread(config) as server, aggregator_stub(server.target) as stub:
        wait_serving(server.target, 30)
        results = _stream_images(stub, "cam", images, per_message=12)
        state = stub.GetTemplate(pb.GetTemplateRequest(subject_id="cam")).subject
    np.testing.assert_allclose([r.quality for r in results], qualities, atol=1e-5)
    expected = progressive_templates(embeddings, np.clip(qualities, 0, 1))[-1]
    np.testing.assert_allclose(template_of(state), expected, atol=1e-4)


@pytest.mark.integration
@pytest.mark.slow
def test_bad_images_fail_alone_and_enroll_identify_from_images(image_server, triton, people):
    good = people["person2"][:3]
    jpeg = good[0]
    frames = [
        image_frame("s", 1, good[0]),
        image_frame("s", 2, b""),
        image_frame("s", 3, jpeg[: len(jpeg) // 2]),  # truncated JPEG
        image_frame("s", 4, b"GIF89a not really"),
        image_frame("s", 5, good[1]),
        feature_frame("s", 6, unit(np.ones(256)), 0.9),  # wrong dimension for this 128-d model
    ]
    with aggregator_stub(image_server.target) as stub:
        (response,) = stub.StreamFrames(iter([pb.StreamFramesRequest(frames=frames)]), timeout=60)
        statuses = [r.status for r in response.results]
        assert statuses[0] == pb.FRAME_STATUS_SEEDED and statuses[4] != pb.FRAME_STATUS_INVALID
        assert statuses[1:4] == [pb.FRAME_STATUS_INVALID] * 3 and statuses[5] == pb.FRAME_STATUS_INVALID
        assert "empty" in response.results[1].error.message and "truncated" in response.results[2].error.message
        assert {r.error.code for r in response.results if r.status == pb.FRAME_STATUS_INVALID} == {
            grpc.StatusCode.INVALID_ARGUMENT.value[0]
        }
        assert stub.GetTemplate(pb.GetTemplateRequest(subject_id="s")).subject.frame_count == 2

        for name, images in people.items():
            enrolled = stub.Enroll(pb.EnrollRequest(identity_id=name, images=pb.ImageSet(images=images[:6])))
            assert len(enrolled.image_qualities) == 6
        embeddings, qualities = _direct(triton, people["person1"][:6])
        gallery_template = qwfa(embeddings, np.clip(qualities, 0, 1))
        by_embedding = stub.Identify(pb.IdentifyRequest(embedding=gallery_template.astype("<f4").tobytes()))
        assert by_embedding.matches[0].identity_id == "person1" and by_embedding.matches[0].score > 0.999
        for name, images in people.items():
            probe = stub.Identify(pb.IdentifyRequest(images=pb.ImageSet(images=images[6:]), top_k=3))
            assert probe.matches[0].identity_id == name, (name, probe)
        with pytest.raises(grpc.RpcError) as err:
            stub.Identify(pb.IdentifyRequest(images=pb.ImageSet(images=[good[0], b"junk"])))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image 1" in err.value.details()


@pytest.mark.integration
@pytest.mark.slow
def test_concurrent_streams_share_micro_batches(image_server, people):
    errors: list[BaseException] = []

    def run(subject: str, images: list[bytes]) -> None:
        try:
            with aggregator_stub(image_server.target) as stub:
                for rep in range(3):
                    _stream_images(stub, subject, images, per_message=1, first_seq=1 + 12 * rep)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"c{i}", people[f"person{i % 3}"])) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    text = image_server.server.service.metrics.exposition().decode()
    count = _sample(text, "eqface_aggregator_triton_batch_images_count")
    total = _sample(text, "eqface_aggregator_triton_batch_images_sum")
    assert total == 6 * 36 and count < total  # several streams' images went to Triton together


@pytest.mark.integration
@pytest.mark.slow
def test_triton_outage_is_unavailable_then_recovers(tmp_path, triton, mobilefacenet, people):
    """Triton hung (SIGSTOP), then gone (stopped), then back: image frames get UNAVAILABLE, the Triton component's
    health follows, while the service stays SERVING and feature frames and stored-template reads keep working."""
    images = people["person0"]
    config = _config(tmp_path, triton, mobilefacenet, timeout_s=1.0)
    with serve_in_thread(config) as server, aggregator_stub(server.target) as stub:
        wait_serving(server.target, 30)
        assert health_status(server.target, TRITON_HEALTH) == SERVING
        _stream_images(stub, "cam", images[:2])
        features = StreamSession(stub)  # feature mode must keep working throughout
        assert features.exchange(pb.StreamFramesRequest(frames=[feature_frame("f", 1, unit(np.ones(128)), 0.9)]))
        probe = embedding_bytes(unit(np.ones(128)))
        stub.Enroll(pb.EnrollRequest(identity_id="known", subject_id="cam"))

        for outage, restore in ((triton.freeze, triton.thaw), (triton.stop, triton.start)):
            outage()
            with pytest.raises(grpc.RpcError) as err:
                _stream_images(stub, "cam", images[2:4], first_seq=3)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            _wait_health(server.target, TRITON_HEALTH, NOT_SERVING)
            # Readiness ("" and the service name) does not follow Triton: this replica still serves.
            assert health_status(server.target, "") == SERVING
            assert health_status(server.target, SERVICE_NAME) == SERVING
            seq = 2 + int(restore == triton.start)
            reply = features.exchange(pb.StreamFramesRequest(frames=[feature_frame("f", seq, unit(np.ones(128)), 0.9)]))
            assert reply.results[0].status == pb.FRAME_STATUS_ACCEPTED
            assert stub.GetTemplate(pb.GetTemplateRequest(subject_id="cam")).subject.frame_count == 2
            assert set(stub.ListSubjects(pb.ListSubjectsRequest()).subject_ids) == {"cam", "f"}
            assert [m.identity_id for m in stub.Identify(pb.IdentifyRequest(embedding=probe)).matches] == ["known"]
            assert stub.Identify(pb.IdentifyRequest(subject_id="f")).gallery_size == 1
            with pytest.raises(grpc.RpcError) as err:
                stub.Identify(pb.IdentifyRequest(images=pb.ImageSet(images=images[:1])))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            restore()
            _wait_health(server.target, TRITON_HEALTH, SERVING, timeout_s=30)
            results = _stream_images(stub, "cam", images[2:4], first_seq=3)
            assert [r.status != pb.FRAME_STATUS_INVALID for r in results] == [True, True]
            stub.DeleteSubject(pb.DeleteSubjectRequest(subject_id="cam"))
            _stream_images(stub, "cam", images[:2])
        features.close()
        text = server.server.service.metrics.exposition().decode()
        assert _sample(text, 'eqface_aggregator_triton_errors_total{reason="deadline_exceeded"}') >= 1
        assert _sample(text, 'eqface_aggregator_dependency_up{dependency="triton"}') == 1


@pytest.mark.integration
@pytest.mark.parametrize("crashed", ["preprocess", "eqface_onnx"])
def test_a_crashed_backend_stub_is_not_ready_until_triton_restarts(tmp_path, triton, mobilefacenet, people, crashed):
    """A python-backend stub that dies leaves Triton reporting its model ready while every request fails: the
    service's probe request finds it, so image frames answer UNAVAILABLE (resend later) at once, the Triton
    component and dependency_up say so (the alert), feature frames keep working; a restarted Triton is followed."""
    images = people["person0"]
    with serve_in_thread(_config(tmp_path, triton, mobilefacenet)) as server, aggregator_stub(server.target) as stub:
        wait_serving(server.target, 30)
        _stream_images(stub, "cam", images[:2])
        triton.crash_stub(crashed)
        _wait_health(server.target, TRITON_HEALTH, NOT_SERVING)
        with pytest.raises(grpc.RpcError) as err:
            _stream_images(stub, "cam", images[2:4], first_seq=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert health_status(server.target, "") == SERVING  # readiness does not follow Triton
        feature = pb.StreamFramesRequest(frames=[feature_frame("f", 1, unit(np.ones(128)), 0.9)])
        reply = stub.StreamFrames(iter([feature]))
        assert [r.status for m in reply for r in m.results] == [pb.FRAME_STATUS_SEEDED]
        text = server.server.service.metrics.exposition().decode()
        assert _sample(text, 'eqface_aggregator_dependency_up{dependency="triton"}') == 0
        assert _sample(text, 'eqface_aggregator_triton_errors_total{reason="probe_internal"}') >= 1
        triton.stop()
        triton.start()
        _wait_health(server.target, TRITON_HEALTH, SERVING, timeout_s=30)
        assert len(_stream_images(stub, "cam", images[2:4], first_seq=3)) == 2


@pytest.mark.integration
@pytest.mark.slow
def test_tensor_mode_from_the_command_line_sends_the_served_models_size(tmp_path, triton, people):
    """``python -m eqface.service --triton-input tensor`` on the 112x96 MobileFaceNet: no flag names the size (it
    used to default to 112x112, which Triton rejected); the service reads it from the model's metadata."""
    images = people["person2"]
    embeddings, qualities = _direct(triton, images)
    args = ["--store", f"sqlite:///{tmp_path}/state.db", "--metrics-port", "0", "--embedding-dim", "128"]
    args += ["--triton-url", triton.grpc_url, "--triton-input", "tensor", "--triton-timeout", "5"]
    with ServerProcess(args, tmp_path / "server.log").start(ready_timeout_s=60) as server:
        with aggregator_stub(server.target) as stub:
            results = _stream_images(stub, "cam", images, per_message=6)
            state = stub.GetTemplate(pb.GetTemplateRequest(subject_id="cam")).subject
    assert all(r.status != pb.FRAME_STATUS_INVALID for r in results)
    np.testing.assert_allclose([r.quality for r in results], qualities, atol=1e-5)
    expected = progressive_templates(embeddings, np.clip(qualities, 0, 1))[-1]
    np.testing.assert_allclose(template_of(state), expected, atol=1e-4)


@pytest.mark.integration
@pytest.mark.slow
def test_an_embedding_dim_the_served_model_does_not_have_stops_the_start(tmp_path, triton):
    args = [sys.executable, "-m", "eqface.service", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]
    args += [
        "--insecure",
        "--store",
        f"sqlite:///{tmp_path}/state.db",
        "--triton-url",
        triton.grpc_url,
        "--embedding-dim",
        "512",
    ]
    out = subprocess.run(args, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "returns 128-d embeddings but the service is configured for 512" in out.stderr


def _wait_health(target: str, service: str, status: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while health_status(target, service) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"health of {service!r} did not become {status} in {timeout_s}s")
        time.sleep(0.05)


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _with_thresholds(source: Path, target: Path, thresholds: Thresholds) -> Path:
    """A copy of an exported model whose metadata carries ``thresholds`` (as `eqface export` stores them)."""
    model = onnx.load(str(source))
    for key, value in {**thresholds.as_metadata(), contract.CALIBRATION_KEY: '{"rule": "test"}'}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, target)
    return target


@pytest.mark.integration
@pytest.mark.slow
def test_the_aggregator_takes_its_thresholds_from_the_served_model(tmp_path, mobilefacenet, shared_data, people):
    """Export-time calibration → ONNX metadata → Triton config parameters → the service's gates, also after a
    redeployment; a flag overrides only its own threshold."""
    images = people["person0"]
    calibrated = tmp_path / "calibrated.onnx"
    shutil.copyfile(mobilefacenet.onnx_path, calibrated)
    faces = pack_faces(shared_data / FACE_PACK)
    calibration = calibrate_onnx(calibrated, faces, CalibrationSettings(max_images=400))
    write_thresholds(calibrated, calibration, faces.description)
    thresholds = calibration.thresholds
    repository = tmp_path / "repository"
    write_model_repository(calibrated, repository, variant="local")
    triton = TritonProcess(repository, tmp_path / "triton.log")
    try:
        triton.start()
        embeddings, qualities = _direct(triton, images)
        config = _config(tmp_path, triton, mobilefacenet)
        with serve_in_thread(config) as server, aggregator_stub(server.target) as stub:
            wait_serving(server.target, 30)
            service = server.server.service
            used = service.thresholds
            assert dict(used.sources) == {"f_th": "model", "s_th": "model", "qwfaf_s_th": "model"}
            assert Thresholds(used.f_th, used.s_th, used.qwfaf_s_th) == thresholds
            text = service.metrics.exposition().decode()
            gauge = 'eqface_aggregator_aggregation_threshold{{source="model",threshold="{}"}}'
            assert _sample(text, gauge.format("f_th")) == pytest.approx(thresholds.f_th)
            assert _sample(text, gauge.format("s_th")) == pytest.approx(thresholds.s_th)
            _stream_images(stub, "cam", images)
            state = stub.GetTemplate(pb.GetTemplateRequest(subject_id="cam")).subject
            gated = progressive_templates(embeddings, np.clip(qualities, 0, 1), thresholds.f_th, thresholds.s_th)
            np.testing.assert_allclose(template_of(state), gated[-1], atol=1e-4)

            # Redeployed with other thresholds: the probe reads them, no restart of the service.
            strict = Thresholds(f_th=thresholds.f_th, s_th=0.999, qwfaf_s_th=0.999)
            triton.stop()
            write_model_repository(
                _with_thresholds(mobilefacenet.onnx_path, tmp_path / "strict.onnx", strict),
                repository,
                variant="local",
                overwrite=True,
            )
            triton.start()
            deadline = time.monotonic() + 60
            while service.thresholds.s_th != strict.s_th:
                assert time.monotonic() < deadline, f"still {service.thresholds}"
                time.sleep(0.1)
            _wait_health(server.target, TRITON_HEALTH, SERVING, timeout_s=30)
            _stream_images(stub, "cam2", images)
            state = stub.GetTemplate(pb.GetTemplateRequest(subject_id="cam2")).subject
            np.testing.assert_allclose(template_of(state), embeddings[0], atol=1e-4)  # every later frame rejected

        with serve_in_thread(replace(config, s_th=0.05)) as server:
            wait_serving(server.target, 30)
            used = server.server.service.thresholds
            assert (used.s_th, used.sources["s_th"]) == (0.05, "flag")
            assert (used.f_th, used.sources["f_th"]) == (strict.f_th, "model")
    finally:
        triton.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_an_uncalibrated_model_falls_back_to_the_paper_thresholds(image_server):
    used = image_server.server.service.thresholds
    assert (used.f_th, used.s_th) == (PAPER_F_TH, PAPER_S_TH)
    assert set(used.sources.values()) == {"paper_default"}
