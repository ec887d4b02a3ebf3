"""``eqface import-onnx`` on the shared pretrained MobileFaceNet (batch fixed at 1): dynamic batch, tap, checked input
normalisation on real CelebA faces, and refusals with clear messages."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from eqface.byor.importer import CheckOptions, ImportOptions, import_onnx
from eqface.byor.norm_check import NormalisationCheckError
from eqface.byor.normalisation import InputNormalisation
from eqface.byor.recogniser import MANIFEST_FILE, MODEL_FILE, Recogniser
from eqface.cli import main

PHOTO_ANALYZE = "weights/mobilefacenet_photo_analyze.onnx"
# Its documented setting (../shared/data/README.md): RGB, (x − 127)/128.
PHOTO_ANALYZE_NORM = InputNormalisation(mean=127.0, std=128.0)
pytestmark = pytest.mark.slow
FEW_FACES = CheckOptions(faces=150)  # every pair of 150 held-out faces: enough to separate right from wrong


@pytest.fixture(scope="module")
def imported(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("photo_analyze")
    manifest = import_onnx(shared_data / PHOTO_ANALYZE, out, ImportOptions(PHOTO_ANALYZE_NORM, check=FEW_FACES))
    return out, manifest


def test_import_exposes_a_dynamic_batch_and_the_pre_pooling_map(imported):
    out, manifest = imported
    assert manifest.tap_name == "465" and manifest.tap_shape == (512, 7, 7)  # the map before the 7×7 GDC conv
    assert manifest.batch_fixes == ("Reshape 'Reshape_161': [1, -1] → [0, -1]",)
    assert (manifest.image_size, manifest.embedding_size) == ((112, 112), 128)
    model = onnx.load(str(out / MODEL_FILE))
    assert [v.type.tensor_type.shape.dim[0].dim_param for v in model.graph.output] == ["batch", "batch"]
    recorded = json.loads({p.key: p.value for p in model.metadata_props}["eqface.byor"])
    assert recorded["normalisation"] == PHOTO_ANALYZE_NORM.to_dict()
    assert json.loads((out / MANIFEST_FILE).read_text())["normalisation"]["channel_order"] == "RGB"


def test_the_stated_normalisation_passed_the_check_on_real_faces(imported):
    check = imported[1].check
    assert check["passed"] and check["faces"] == 150 and check["auc"] > 0.95
    assert check["alternatives"]["RGB, (x − 0) / 1"] < 0.8  # raw pixels: measurably wrong for this network


def test_batch_of_seven_equals_seven_single_runs(imported, faces):
    from eqface.data.decode import decode_image

    recogniser = Recogniser(imported[0])
    images = np.stack([decode_image(b) for b in faces[:7]])
    emb, tap = recogniser.embed(images)
    singles = [recogniser.embed(images[i : i + 1]) for i in range(7)]
    np.testing.assert_allclose(emb, np.concatenate([s[0] for s in singles]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tap, np.concatenate([s[1] for s in singles]), rtol=1e-4, atol=1e-4)
    assert tap.shape == (7, 512, 7, 7)


def test_a_wrong_normalisation_is_refused_with_the_measured_aucs(shared_data, tmp_path):
    raw_pixels = InputNormalisation(mean=0.0, std=1.0)  # the classic forgotten normalisation
    with pytest.raises(NormalisationCheckError, match=r"AUC 0\.\d+ on 150 real faces, below 0\.9"):
        import_onnx(shared_data / PHOTO_ANALYZE, tmp_path, ImportOptions(raw_pixels, check=FEW_FACES))
    assert not (tmp_path / MODEL_FILE).exists() and not (tmp_path / MANIFEST_FILE).exists()


def test_the_cli_refuses_a_two_input_graph_in_one_line(tmp_path, capsys):
    image = [1, 3, 8, 8]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, image) for n in ("a", "b")]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, image)]
    model = helper.make_model(helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", inputs, out))
    onnx.save(model, tmp_path / "two.onnx")
    assert main(["import-onnx", str(tmp_path / "two.onnx"), "--out", str(tmp_path / "x"), "--no-check"]) == 2
    assert "expected one image input [N, 3, H, W], the graph has 2" in capsys.readouterr().err


def test_the_cli_refuses_a_file_that_is_not_onnx(tmp_path, capsys):
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a model")
    assert main(["import-onnx", str(tmp_path / "junk.onnx"), "--out", str(tmp_path / "x")]) == 2
    assert "is not a readable ONNX model" in capsys.readouterr().err
