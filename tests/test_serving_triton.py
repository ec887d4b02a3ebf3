"""Real Triton (bundled in nvidia-pytriton) serving the local repository: results, batching, errors, health."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from eqface import contract
from eqface.data.decode import ImageLimits, decode_image
from eqface.export.onnx import onnx_session, run_onnx
from eqface.service.config import ServiceConfig
from eqface.service.errors import InvalidArgument
from eqface.service.service import _decode_all
from eqface.serving.client import image_input, infer_images, infer_tensor, tensor_input
from eqface.serving.metrics import scrape_inference_counts
from tests.support.images import decode_cases, preprocess_like_training

pytestmark = pytest.mark.integration
ATOL = 1e-5  # same ONNX file, same onnxruntime; only the batch it ran in may differ


@pytest.fixture(scope="module")
def reference(mobilefacenet):
    return onnx_session(mobilefacenet.onnx_path)


def _error(call) -> str:
    """The message of the error response that ``call`` must get; client-data errors are INVALID_ARGUMENT."""
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    return info.value.message()


def test_tensor_inference_equals_in_process_onnxruntime(grpc_client, mobilefacenet, reference, faces):
    x = preprocess_like_training(faces[:8], mobilefacenet.spec.image_size)
    embedding, quality = infer_tensor(grpc_client, x)
    expected_embedding, expected_quality = run_onnx(reference, x)
    assert embedding.dtype == quality.dtype == np.float32
    assert embedding.shape == (8, 128) and quality.shape == (8, 1)
    np.testing.assert_allclose(embedding, expected_embedding, atol=ATOL)
    np.testing.assert_allclose(quality, expected_quality, atol=ATOL)


def test_bytes_in_ensemble_equals_the_tensor_path(grpc_client, mobilefacenet, faces):
    embedding, quality = infer_images(grpc_client, faces[:8])
    x = preprocess_like_training(faces[:8], mobilefacenet.spec.image_size)
    tensor_embedding, tensor_quality = infer_tensor(grpc_client, x)
    np.testing.assert_allclose(embedding, tensor_embedding, atol=ATOL)
    np.testing.assert_allclose(quality, tensor_quality, atol=ATOL)


def test_preprocess_reproduces_training_exactly(grpc_client, mobilefacenet, faces):
    """The server-side decode/fit/normalise is bit-identical to the training pipeline."""
    result = grpc_client.infer(contract.PREPROCESS_MODEL_NAME, [image_input(faces[:4])])
    x = result.as_numpy(contract.INPUT_NAME)
    assert x.dtype == np.float32 and x.shape == (4, *mobilefacenet.spec.input_shape)
    np.testing.assert_array_equal(x, preprocess_like_training(faces[:4], mobilefacenet.spec.image_size))


def test_png_and_grayscale_images_are_accepted(grpc_client, faces):
    from eqface.data.image_ops import encode_image

    rgb = decode_image(faces[0])
    png = encode_image(rgb, fmt="PNG")
    gray = encode_image(rgb.mean(axis=2).astype(np.uint8), fmt="JPEG")
    embedding, quality = infer_images(grpc_client, [png, gray])
    assert embedding.shape == (2, 128) and np.isfinite(embedding).all()


def test_the_service_and_triton_preprocess_accept_the_same_images(grpc_client, mobilefacenet):
    """Each case goes to the real ``preprocess`` model and through the service's own decode step (tensor mode, its
    default limits): both accept it (with the same tensor) or both refuse it (with the same message)."""
    config, size = ServiceConfig(), mobilefacenet.spec.image_size
    limits = ImageLimits(config.max_image_bytes, config.max_image_pixels)
    for name, (data, error) in decode_cases().items():
        (service,) = _decode_all([data], limits, size)
        if error is None:
            triton = grpc_client.infer(contract.PREPROCESS_MODEL_NAME, [image_input([data])])
            np.testing.assert_array_equal(triton.as_numpy(contract.INPUT_NAME)[0], service, err_msg=name)
        else:
            message = _error(lambda data=data: grpc_client.infer(contract.PREPROCESS_MODEL_NAME, [image_input([data])]))
            assert isinstance(service, InvalidArgument) and error in str(service), name
            assert error in message and str(service).partition(": ")[2] in message, (name, message, str(service))


def test_dynamic_batching_batches_concurrent_single_image_requests(triton_server, mobilefacenet, faces):
    clients, per_client = 32, 4
    x = preprocess_like_training(faces[:clients], mobilefacenet.spec.image_size)
    before = scrape_inference_counts(triton_server.metrics_url, contract.ONNX_MODEL_NAME)
    start, errors = threading.Barrier(clients), []

    def client_loop(i: int) -> None:
        with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
            start.wait()
            for _ in range(per_client):
                try:
                    infer_tensor(client, x[i : i + 1])
                except Exception as exc:  # collected and asserted below, in the test thread
                    errors.append(exc)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    deadline = time.monotonic() + 20  # Triton refreshes its metrics periodically: wait for the last executions
    while True:
        window = scrape_inference_counts(triton_server.metrics_url, contract.ONNX_MODEL_NAME) - before
        if window.inferences >= clients * per_client or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    print(
        f"{window.inferences} requests in {window.executions} executions, average batch {window.average_batch_size:.1f}"
    )
    assert window.inferences == clients * per_client
    assert window.executions < window.inferences / 2


def test_a_corrupt_image_fails_only_its_own_request(triton_server, faces):
    """Requests batched together with a bad one still succeed: errors are per request, not per batch."""
    results: dict[int, object] = {}
    done = threading.Event()
    payloads = [[faces[i]] if i % 4 else [b"\xff\xd8 truncated jpeg"] for i in range(16)]
    before = scrape_inference_counts(triton_server.metrics_url, contract.PREPROCESS_MODEL_NAME)
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)

    def callback(i, result, error):
        results[i] = error if error is not None else result
        if len(results) == len(payloads):
            done.set()

    for i, images in enumerate(payloads):
        client.async_infer(
            contract.ENSEMBLE_MODEL_NAME,
            [image_input(images)],
            callback=lambda result, error, i=i: callback(i, result, error),
        )
    assert done.wait(60)
    client.close()
    window = scrape_inference_counts(triton_server.metrics_url, contract.PREPROCESS_MODEL_NAME) - before
    assert window.executions < len(payloads), "the requests were not batched together; the test proves nothing"
    for i, outcome in results.items():
        if i % 4:
            assert outcome.as_numpy(contract.EMBEDDING_NAME).shape == (1, 128)
        else:
            assert isinstance(outcome, InferenceServerException)
            assert "image 0: cannot decode image" in outcome.message()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong shape", "unexpected shape for input 'input'"),
        ("wrong dtype", "data-type is 'FP64', but model 'eqface_onnx' expects 'FP32'"),
        ("oversized batch", "batch-size must be <= 64"),
        ("empty image", "image 0: empty image data"),
        ("corrupt image", "image 0: cannot decode image"),
        ("image without batch axis", "unexpected shape for input 'image'"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_stays_up(
    case, expected, grpc_client, triton_server, mobilefacenet, faces
):
    h, w = mobilefacenet.spec.image_size
    calls = {
        "wrong shape": lambda: infer_tensor(grpc_client, np.zeros((2, 3, h + 1, w), np.float32)),
        "wrong dtype": lambda: infer_tensor(grpc_client, np.zeros((2, 3, h, w), np.float64)),
        "oversized batch": lambda: infer_tensor(grpc_client, np.zeros((65, 3, h, w), np.float32)),
        "empty image": lambda: infer_images(grpc_client, [b""]),
        "corrupt image": lambda: infer_images(grpc_client, [faces[0][:200]]),
        "image without batch axis": lambda: grpc_client.infer(
            contract.ENSEMBLE_MODEL_NAME, [_unbatched_image(faces[0])]
        ),
    }
    assert expected in _error(calls[case])
    assert triton_server.is_running()
    embedding, _ = infer_images(grpc_client, faces[:1])
    assert embedding.shape == (1, 128)


def _unbatched_image(data: bytes) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(contract.IMAGE_BYTES_NAME, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
    return tensor


def test_health_endpoints(grpc_client, triton_server):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    for model in (contract.ENSEMBLE_MODEL_NAME, contract.PREPROCESS_MODEL_NAME, contract.ONNX_MODEL_NAME):
        assert grpc_client.is_model_ready(model)
    assert not grpc_client.is_model_ready("no_such_model")
    http = httpclient.InferenceServerClient(triton_server.http_url)
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready(contract.ENSEMBLE_MODEL_NAME)
    http.close()
    assert {m["name"] for m in triton_server.models() if m["state"] == "READY"} == {
        contract.ENSEMBLE_MODEL_NAME,
        contract.PREPROCESS_MODEL_NAME,
        contract.ONNX_MODEL_NAME,
    }


def test_model_metadata_follows_the_contract(grpc_client, mobilefacenet):
    def tensors(items):
        return {t.name: (t.datatype, list(t.shape)) for t in items}

    outputs = {contract.EMBEDDING_NAME: ("FP32", [-1, 128]), contract.QUALITY_NAME: ("FP32", [-1, 1])}
    onnx_meta = grpc_client.get_model_metadata(contract.ONNX_MODEL_NAME)
    assert tensors(onnx_meta.inputs) == {contract.INPUT_NAME: ("FP32", [-1, *mobilefacenet.spec.input_shape])}
    assert tensors(onnx_meta.outputs) == outputs
    ensemble_meta = grpc_client.get_model_metadata(contract.ENSEMBLE_MODEL_NAME)
    assert ensemble_meta.platform == "ensemble" and list(ensemble_meta.versions) == ["1"]
    assert tensors(ensemble_meta.inputs) == {contract.IMAGE_BYTES_NAME: ("BYTES", [-1, *contract.IMAGE_BYTES_SHAPE])}
    assert tensors(ensemble_meta.outputs) == outputs
    config = grpc_client.get_model_config(contract.ONNX_MODEL_NAME).config
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    # `dynamic_batching {}` as written; Triton's auto-complete may fill in max_batch_size, which means the same.
    assert list(config.dynamic_batching.preferred_batch_size) in ([], [config.max_batch_size])
    assert config.dynamic_batching.max_queue_delay_microseconds == 0 and len(config.model_warmup) == 1
    assert grpc_client.get_server_metadata().name == "triton"


def test_tensor_input_helper_sends_what_it_is_given():
    x = np.zeros((2, 3, 4, 5), np.float32)
    tensor = tensor_input(x)
    assert (tensor.name(), tensor.datatype(), tensor.shape()) == (contract.INPUT_NAME, "FP32", [2, 3, 4, 5])
