"""int8 serving variant: the quantized file keeps the contract and metadata, and stays close to fp32 on real faces."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from eqface import contract
from eqface.aggregation import Thresholds
from eqface.data.packs import load_pack
from eqface.data.sources import split_identities
from eqface.export.flops import count_flops
from eqface.export.onnx import onnx_session, run_onnx, verify_onnx
from eqface.export.quantize import (
    INT8,
    QUANTIZATION_KEY,
    QuantizationSettings,
    compare_precisions,
    embedding_tail_nodes,
    evenly_spaced_indices,
    model_precision,
    name_nodes,
    pack_training_faces,
    quality_head_nodes,
    quantize_onnx,
)
from eqface.export.thresholds import model_metadata, read_thresholds
from tests.support.images import FACE_PACK

HELD_OUT = 40  # the CelebA pack's evaluation identities, as in the shipped model's training config
CALIBRATION = QuantizationSettings(calibration_images=48, batch_size=16)


@pytest.fixture(scope="module")
def quantized(mobilefacenet, shared_data, tmp_path_factory):
    """(fp32 file with calibrated thresholds, its int8 file, the result) for the session's MobileFaceNet."""
    root = tmp_path_factory.mktemp("int8")
    fp32 = root / "model.onnx"
    model = onnx.load(str(mobilefacenet.onnx_path))
    metadata = {**Thresholds(0.35, 0.2, 0.25).as_metadata(), contract.CALIBRATION_KEY: json.dumps({"rule": "x"})}
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(fp32))
    training = pack_training_faces(shared_data / FACE_PACK, HELD_OUT)
    result = quantize_onnx(fp32, root / "model.int8.onnx", training, CALIBRATION)
    return fp32, result.path, result


def test_the_int8_file_keeps_the_contract_and_the_metadata(quantized, mobilefacenet):
    fp32, int8, result = quantized
    assert verify_onnx(int8) == mobilefacenet.spec  # names, float32 in/out, dynamic batch, unit-norm, q in [0, 1]
    meta, source = model_metadata(int8), model_metadata(fp32)
    assert {k: meta[k] for k in source} == source  # thresholds and their calibration note, unchanged
    assert read_thresholds(int8) == Thresholds(0.35, 0.2, 0.25)
    assert meta[contract.PRECISION_KEY] == INT8 and model_precision(int8) == INT8 and model_precision(fp32) == "fp32"
    note = json.loads(meta[QUANTIZATION_KEY])
    assert note["format"] == "QDQ" and note["per_channel"] and note["calibration_images"] == 48
    assert "training identities" in note["calibration_set"] and result.calibration_set == note["calibration_set"]
    graph = onnx.load(str(int8)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 50
    # PRelu was rewritten at export (eqface.export.prelu); quantization folds each one a quantized Conv reads into
    # that Conv. Only the last, which the fp32 quality head reads too, keeps its fp32 rewrite for the head.
    fp32_ops = [n.op_type for n in onnx.load(str(fp32)).graph.node]
    prelus = fp32_ops.count("Min")
    assert prelus > 10 and "PRelu" not in fp32_ops and "PRelu" not in ops and ops.count("Min") == 1
    assert ops.count("QLinearConv") + ops.count("Conv") >= 2 * fp32_ops.count("Conv") - 2
    rewritten = {n.name for n in graph.node if n.op_type == "Min"}
    rewritten |= {n.name for n in graph.node if n.op_type in ("Mul", "Add") and n.name[:-4] + "_min" in rewritten}
    assert len(rewritten) == 3 and rewritten <= set(result.fp32_nodes)
    # Weights are stored as int8 with one scale per output channel; activations as uint8.
    weights = {i.name: i for i in graph.initializer}
    conv_weights = [
        weights[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights
    ]
    assert any(w.data_type == TensorProto.INT8 and len(w.dims) == 4 for w in conv_weights)
    # The quality head stays fp32: no quantize/dequantize node between the backbone and the quality output.
    producers = {o: n for n in graph.node for o in n.output}
    node = producers[contract.QUALITY_NAME]
    head = []
    while node.op_type not in ("DequantizeLinear", "QuantizeLinear"):
        head.append(node)
        node = producers[node.input[0]]
    assert [n.op_type for n in head[:2]] == ["Sigmoid", "Gemm"] and {n.name for n in head} <= set(result.fp32_nodes)
    head_weights = [weights[i] for n in head for i in n.input[1:] if i in weights and len(weights[i].dims) == 2]
    assert head_weights and all(w.data_type == TensorProto.FLOAT for w in head_weights)


def test_a_quantized_file_is_not_quantized_twice(quantized, shared_data, tmp_path):
    _, int8, _ = quantized
    with pytest.raises(ValueError, match="already quantized"):
        quantize_onnx(int8, tmp_path / "again.onnx", pack_training_faces(shared_data / FACE_PACK, HELD_OUT))
    assert not (tmp_path / "again.onnx").exists()


def test_int8_stays_close_to_fp32_on_held_out_faces(quantized, shared_data):
    fp32, int8, _ = quantized
    _, held_out = split_identities(load_pack(shared_data / FACE_PACK), HELD_OUT)
    subset = held_out.subset(np.flatnonzero(held_out.labels < 12))  # ~250 faces of 12 identities never calibrated on
    c = compare_precisions(fp32, int8, subset, max_pairs=1000)
    assert c.faces == len(subset) and c.pairs == 2000
    # Tiny scale (48 calibration faces, pairs of 12 identities): looser than the bench's 0.3 points / 0.98 targets.
    assert c.accuracy_drop_points <= 2.0, c
    assert c.quality_spearman >= 0.95, c
    assert c.embedding_cosine >= 0.9, c


def test_the_quality_head_is_found_from_the_graph_alone(mobilefacenet):
    model = onnx.load(str(mobilefacenet.onnx_path))
    head = set(quality_head_nodes(model))
    producers = {o: n.name for n in model.graph.node for o in n.output}
    assert producers[contract.QUALITY_NAME] in head and producers[contract.EMBEDDING_NAME] not in head
    # Nothing the embedding depends on is in the head: its inputs are backbone tensors or its own nodes' outputs.
    head_outputs = {o for n in model.graph.node if n.name in head for o in n.output}
    assert not head_outputs & {i for n in model.graph.node if n.name not in head for i in n.input}


def test_calibration_faces_are_spread_over_the_source():
    np.testing.assert_array_equal(evenly_spaced_indices(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(evenly_spaced_indices(3, 8), [0, 1, 2])
    with pytest.raises(ValueError, match="no faces"):
        evenly_spaced_indices(0, 4)
    with pytest.raises(ValueError, match="calibration method"):
        QuantizationSettings(method="kl")


def test_flops_are_counted_from_the_graph(tmp_path, quantized):
    # Conv 3→8, 3×3, stride 1, pad 1 on 1×3×10×10: 8·10·10 outputs × 3·3·3 MACs; Gemm 800→5: 5 outputs × 800 MACs.
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], np.zeros(216, np.float32)),
            helper.make_tensor("g", TensorProto.FLOAT, [5, 800], np.zeros(4000, np.float32)),
        ],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert count_flops(path) == {"Conv": 2 * 800 * 27, "Gemm": 2 * 5 * 800, "MatMul": 0}
    # A QDQ file counts its own convolutions: with PRelu folded (eqface.export.prelu), a Conv that reads one runs
    # twice (its linear and its Relu part), and so does the Conv that writes it; the fp32 quality head's does not.
    fp32, int8, _ = quantized
    model, executed = count_flops(fp32), count_flops(int8)
    assert model["Conv"] > 1e8 and 1.95 * model["Conv"] < executed["Conv"] < 2 * model["Conv"]
    assert executed["Gemm"] == model["Gemm"]


def test_int8_runs_any_batch_like_fp32(quantized):
    fp32, int8, _ = quantized
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3, 112, 96)).astype(np.float32)
    session = onnx_session(int8)
    embedding, quality = run_onnx(session, x)
    singles = [run_onnx(session, x[i : i + 1]) for i in range(5)]
    np.testing.assert_allclose(np.concatenate([s[0] for s in singles]), embedding, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([s[1] for s in singles]), quality, atol=1e-5)


def test_the_embedding_normalisation_is_found_from_the_graph_alone(mobilefacenet):
    model = onnx.load(str(mobilefacenet.onnx_path))
    tail = set(embedding_tail_nodes(model))
    ops = {n.op_type for n in model.graph.node if n.name in tail}
    producers = {o: n.name for n in model.graph.node for o in n.output}
    assert producers[contract.EMBEDDING_NAME] in tail and "ReduceL2" in ops and "Conv" not in ops
    assert not tail & set(quality_head_nodes(model))


def test_unnamed_nodes_get_unique_names():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"], name="Relu_0")]
    nodes.append(helper.make_node("Neg", ["b"], ["y"]))
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:]))
    name_nodes(model)
    names = [n.name for n in model.graph.node]
    assert names == ["Relu_0_", "Relu_0", "Neg_2"]


def test_a_byor_graft_is_quantized_like_the_project_model(shared_data, faces, tmp_path):
    """photo_analyze (opset 11, unnamed graft nodes, its own L2 normalisation) + a seeded head: any contract model."""
    from eqface.data.decode import decode_image
    from tests.support.byor import graft_photo_analyze

    images = np.stack([decode_image(b) for b in faces])  # the graft checks its parity on 64 faces
    served, _ = graft_photo_analyze(shared_data, images, tmp_path / "byor")
    int8 = quantize_onnx(
        served, tmp_path / "byor.int8.onnx", pack_training_faces(shared_data / FACE_PACK, HELD_OUT), CALIBRATION
    )
    assert verify_onnx(int8.path) == verify_onnx(served)  # unit-norm embeddings: the normalisation stayed fp32
    assert [o.version for o in onnx.load(str(int8.path)).opset_import if o.domain in ("", "ai.onnx")] == [13]
    _, held_out = split_identities(load_pack(shared_data / FACE_PACK), HELD_OUT)
    c = compare_precisions(served, int8.path, held_out.subset(np.flatnonzero(held_out.labels < 8)), max_pairs=500)
    assert c.accuracy_drop_points <= 2.0 and c.quality_spearman >= 0.95 and c.embedding_cosine >= 0.95, c


def test_a_models_own_data_gives_its_calibration_faces(tmp_path):
    """``eqface quantize --calibration-model`` calibrates on the model's training identities and ``eqface export``
    without a pack on its held-out ones: both read the split from the configuration stored in model.pt."""
    from eqface.config import preset
    from eqface.export.quantize import model_training_faces
    from eqface.export.thresholds import model_data, training_faces
    from eqface.train.distributed import DistEnv
    from eqface.train.plan import train_all_steps

    train_all_steps(preset("test"), tmp_path, DistEnv())
    name, eval_identities, train, held_out = model_data(tmp_path / "model.pt")
    assert name == "synthetic" and eval_identities == 3
    assert len(np.unique(train.labels)) == 5 and len(np.unique(held_out.labels)) == 3
    calibration, evaluation = model_training_faces(tmp_path / "model.pt"), training_faces(tmp_path / "model.pt")
    assert len(calibration.source) == len(train) and calibration.description == "synthetic: training identities"
    assert len(evaluation.source) == len(held_out) and evaluation.description == "synthetic: 3 held-out ids"
