"""ONNX export: contract names/dtypes/shapes, dynamic batch, weights inside, and parity with torch on real faces."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from eqface import contract
from eqface.eval.calibration import CalibrationSettings
from eqface.export.onnx import OnnxContractError, onnx_session, run_onnx, verify_onnx
from eqface.export.parity import PARITY_TOLERANCE, parity_by_batch_size
from eqface.export.thresholds import calibrate_onnx, model_metadata, pack_faces, read_thresholds, write_thresholds
from tests.support.images import FACE_PACK, preprocess_like_training


@pytest.fixture(scope="module")
def real_faces(faces, mobilefacenet) -> np.ndarray:
    """64 real CelebA faces preprocessed exactly as in training, float32 [64, 3, 112, 96]."""
    return preprocess_like_training(faces, mobilefacenet.spec.image_size)


def test_export_follows_the_contract(mobilefacenet):
    model = onnx.load(str(mobilefacenet.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == [contract.INPUT_NAME]
    assert [o.name for o in model.graph.output] == [contract.EMBEDDING_NAME, contract.QUALITY_NAME]

    def shape(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert shape(model.graph.input[0]) == ["batch", 3, 112, 96]
    assert shape(model.graph.output[0]) == ["batch", 128]
    assert shape(model.graph.output[1]) == ["batch", 1]
    values = [*model.graph.input, *model.graph.output]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in values)
    # Weights inside: no external-data initialisers and no side files.
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert sorted(p.name for p in mobilefacenet.onnx_path.parent.iterdir()) == ["model.onnx"]
    assert verify_onnx(mobilefacenet.onnx_path) == mobilefacenet.spec


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_parity_with_torch_on_real_faces(mobilefacenet, real_faces, batch):
    session = onnx_session(mobilefacenet.onnx_path)
    diff = parity_by_batch_size(mobilefacenet.net, session, real_faces, (batch,))[batch]
    print(f"MobileFaceNet on {FACE_PACK}, batch {batch}: max |torch - onnxruntime| = {diff:.2e}")
    assert diff <= PARITY_TOLERANCE
    embedding, quality = run_onnx(session, real_faces[:batch])
    assert embedding.shape == (batch, 128) and quality.shape == (batch, 1)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    assert ((quality >= 0) & (quality <= 1)).all()


def test_verify_rejects_a_fixed_batch_axis(mobilefacenet, tmp_path):
    model = onnx.load(str(mobilefacenet.onnx_path))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, tmp_path / "fixed.onnx")
    with pytest.raises(OnnxContractError, match="batch axis must be dynamic"):
        verify_onnx(tmp_path / "fixed.onnx")


def test_verify_rejects_names_outside_the_contract(mobilefacenet, tmp_path):
    model = onnx.load(str(mobilefacenet.onnx_path))
    model.graph.input[0].name = "data"
    for node in model.graph.node:
        node.input[:] = ["data" if name == contract.INPUT_NAME else name for name in node.input]
    onnx.save(model, tmp_path / "renamed.onnx")
    with pytest.raises(OnnxContractError, match=r"inputs are \['data'\]"):
        verify_onnx(tmp_path / "renamed.onnx")


@pytest.mark.slow
def test_cli_exports_a_trained_model(tmp_path, shared_data):
    """`eqface train` → `eqface export` with the parity check on real images, as a user runs it."""
    eqface = [sys.executable, "-m", "eqface.cli"]
    subprocess.run(
        [*eqface, "train", "--preset", "test", "--out", str(tmp_path / "run"), "--no-summary"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    out = tmp_path / "model.onnx"
    done = subprocess.run(
        [
            *eqface,
            "export",
            str(tmp_path / "run" / "model.pt"),
            "--out",
            str(out),
            "--parity-data",
            str(shared_data / FACE_PACK),
            "--calibration-fmr",  # the test preset holds out few faces: ~200 impostor pairs
            "0.01",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "batch 64: max |torch − onnxruntime|" in done.stdout
    assert verify_onnx(out).embedding_size == 32
    # Calibrated by default on the held-out identities the model's training config names.
    thresholds = read_thresholds(out)
    assert thresholds is not None and f"s_th {thresholds.s_th:.4f}" in done.stdout
    assert "held-out ids" in json.loads(model_metadata(out)[contract.CALIBRATION_KEY])["calibration_set"]


def test_calibrated_thresholds_are_stored_in_the_onnx_metadata(mobilefacenet, shared_data, tmp_path):
    path = tmp_path / "model.onnx"
    shutil.copyfile(mobilefacenet.onnx_path, path)
    assert read_thresholds(path) is None
    faces = pack_faces(shared_data / FACE_PACK)
    calibration = calibrate_onnx(path, faces, CalibrationSettings(fmr=1e-3, max_images=300))
    write_thresholds(path, calibration, faces.description)

    stored = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert {k: stored[k] for k in contract.THRESHOLD_KEYS} == calibration.thresholds.as_metadata()
    assert read_thresholds(path) == calibration.thresholds
    note = json.loads(stored[contract.CALIBRATION_KEY])
    assert note["fmr"] == 1e-3 and note["images"] == 300 and note["calibration_set"] == faces.description
    # The model itself is untouched: still the contract, same outputs as before.
    assert verify_onnx(path) == mobilefacenet.spec
    x = np.random.default_rng(0).uniform(-1, 1, (2, *mobilefacenet.spec.input_shape)).astype(np.float32)
    for a, b in zip(run_onnx(onnx_session(path), x), run_onnx(onnx_session(mobilefacenet.onnx_path), x)):
        np.testing.assert_array_equal(a, b)
    # A second calibration replaces the first instead of adding duplicate keys.
    write_thresholds(path, calibration, "again")
    keys = [p.key for p in onnx.load(str(path)).metadata_props]
    assert sorted(keys) == sorted([*contract.THRESHOLD_KEYS, contract.CALIBRATION_KEY])


def test_cli_rejects_a_missing_model(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "eqface.cli", "export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "checkpoint not found" in done.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_a_reduced_quality_branch_exports_with_parity(shared_data, real_faces, tmp_path):
    import dataclasses

    import torch

    from eqface.contract import InferenceSpec
    from eqface.export.onnx import export_onnx
    from eqface.models import build_model
    from eqface.models.pretrained import load_backbone_weights
    from tests.support.models import MOBILEFACENET, MOBILEFACENET_WEIGHTS

    torch.manual_seed(0)
    net = build_model(dataclasses.replace(MOBILEFACENET, quality_reduce=32))
    load_backbone_weights(net.backbone, shared_data / MOBILEFACENET_WEIGHTS)
    net.eval()
    path = tmp_path / "model.onnx"
    export_onnx(net, InferenceSpec(tuple(MOBILEFACENET.image_size), MOBILEFACENET.embedding_size), path)
    diff = parity_by_batch_size(net, onnx_session(path), real_faces, (1, 16))
    assert max(diff.values()) <= PARITY_TOLERANCE
    assert path.stat().st_size < 8_000_000  # the flat branch alone is 44 MB of float32 weights
