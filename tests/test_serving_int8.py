"""`eqface serve repository --precision int8`: the quantized model behind the same three models, on real Triton."""

from __future__ import annotations

import numpy as np
import pytest

from eqface import contract
from eqface.cli import main
from eqface.export.onnx import onnx_session, run_onnx
from eqface.export.quantize import INT8, model_precision
from eqface.serving.client import infer_images, infer_tensor
from eqface.serving.model_configs import ONNX_FILE, OnnxRuntimeSettings, model_configs, parse
from eqface.serving.repository import CONFIG_FILE, write_model_repository
from tests.support.images import preprocess_like_training
from tests.support.triton import running_triton

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def int8_repository(mobilefacenet, shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("int8_repository")
    argv = ["serve", "repository", str(mobilefacenet.onnx_path), "--out", str(root), "--precision", "int8"]
    pack = str(shared_data / "celeba_wild_subset_rgb112.npz")
    assert main([*argv, "--calibration-data", pack, "--calibration-images", "16"]) == 0
    return root


def test_the_cli_serves_the_quantized_model_through_triton(int8_repository, mobilefacenet, faces, request):
    served = int8_repository / contract.ONNX_MODEL_NAME / "1" / ONNX_FILE
    assert model_precision(served) == INT8 and model_precision(mobilefacenet.onnx_path) == "fp32"
    for model in (contract.ONNX_MODEL_NAME, contract.ENSEMBLE_MODEL_NAME):
        config = parse((int8_repository / model / CONFIG_FILE).read_text())
        assert config.parameters[contract.PRECISION_KEY].string_value == INT8
    x = preprocess_like_training(faces[:4], mobilefacenet.spec.image_size)
    expected = run_onnx(onnx_session(served), x)
    fp32 = run_onnx(onnx_session(mobilefacenet.onnx_path), x)
    import tritonclient.grpc as grpcclient

    with running_triton(int8_repository, request) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        got = infer_tensor(client, x)
        via_bytes = infer_images(client, faces[:4])
        client.close()
    for e, g, b in zip(expected, got, via_bytes, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-5)  # Triton runs exactly the int8 file
        np.testing.assert_allclose(b, e, atol=1e-5)  # and the unchanged ensemble feeds it as in training
    # int8, not the fp32 file under another name: close to fp32 but not equal.
    cosine = np.sum(got[0] * fp32[0], axis=1)
    assert 0.9 < cosine.min() and not np.allclose(got[0], fp32[0], atol=1e-4)


def test_the_precision_asked_for_must_be_the_files(int8_repository, mobilefacenet, tmp_path):
    with pytest.raises(ValueError, match="fp32 model, not int8"):
        write_model_repository(mobilefacenet.onnx_path, tmp_path / "a", precision="int8")
    served = int8_repository / contract.ONNX_MODEL_NAME / "1" / ONNX_FILE
    with pytest.raises(ValueError, match="int8 model, not fp32"):
        write_model_repository(served, tmp_path / "b", precision="fp32")
    repo = write_model_repository(served, tmp_path / "c", variant="production")  # the file's own precision
    assert repo.precision == INT8


def test_int8_runs_on_cpu_instances_and_fp32_configs_are_unchanged(mobilefacenet):
    spec = mobilefacenet.spec
    int8 = model_configs(spec, "production", precision=INT8)[contract.ONNX_MODEL_NAME]
    fp32 = model_configs(spec, "production")[contract.ONNX_MODEL_NAME]
    assert [g.kind for g in int8.instance_group] == [int8.instance_group[0].KIND_CPU]
    assert [g.kind for g in fp32.instance_group] == [fp32.instance_group[0].KIND_GPU]
    assert contract.PRECISION_KEY not in fp32.parameters
    with pytest.raises(ValueError, match="TensorRT"):
        model_configs(spec, "production", runtime=OnnxRuntimeSettings(tensorrt_fp16=True), precision=INT8)
    with pytest.raises(ValueError, match="unknown precision"):
        model_configs(spec, "local", precision="int4")
