"""Graph surgery on tiny hand-built ONNX graphs: what is accepted, what is refused and why, batch fixes, tap search."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from eqface.byor import graph
from eqface.byor.graph import UnsupportedGraphError


def _recogniser(inputs=1, batch=1, outputs=1, image=(3, 8, 8), pool=True) -> onnx.ModelProto:
    """conv 3×3 → relu (the spatial map) → global-kernel conv → Reshape [batch, -1]: a miniature recogniser."""
    rng = np.random.default_rng(0)
    c, h, w = image
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, c, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(5, 4, h, w)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([batch, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["conv"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["conv"], ["fmap"], name="relu1"),
        helper.make_node("Conv", ["fmap" if pool else "x", "w2"], ["pooled"], name="gdc"),
        helper.make_node("Reshape", ["pooled", "shape"], ["emb"], name="flatten"),
    ]
    ins = [
        helper.make_tensor_value_info(f"x{'' if i == 0 else i}", TensorProto.FLOAT, [batch, c, h, w])
        for i in range(inputs)
    ]
    outs = [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [batch, 5])]
    if outputs == 2:
        outs.append(helper.make_tensor_value_info("fmap", TensorProto.FLOAT, [batch, 4, h, w]))
    model = helper.make_model(
        helper.make_graph(nodes, "g", ins, outs, inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    onnx.checker.check_model(model)
    return model


def test_a_miniature_recogniser_is_inspected():
    io = graph.inspect_io(_recogniser())
    assert io == graph.GraphIO("x", "emb", (8, 8), 5, fixed_batch=1)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_recogniser(inputs=2), "expected one image input .* the graph has 2"),
        (_recogniser(outputs=2), "expected one embedding output .* the graph has 2"),
        (_recogniser(image=(1, 8, 8)), r"expected \[N, 3, H, W\]"),
    ],
)
def test_graphs_it_cannot_handle_are_refused_with_what_was_found(model, message):
    with pytest.raises(UnsupportedGraphError, match=message):
        graph.inspect_io(model)


def test_output_picks_one_of_several_outputs():
    assert graph.inspect_io(_recogniser(outputs=2), output_name="emb").output_name == "emb"
    with pytest.raises(UnsupportedGraphError, match="no graph output named 'nope'"):
        graph.inspect_io(_recogniser(outputs=2), output_name="nope")


def test_batch_becomes_dynamic_and_the_reshape_stops_hard_coding_it():
    model = _recogniser()
    io = graph.inspect_io(model)
    fixes = graph.make_batch_dynamic(model, io)
    assert fixes == ["Reshape 'flatten': [1, -1] → [0, -1]"]
    assert "shape" not in {t.name for t in model.graph.initializer}  # the old constant has no user left
    x = np.random.default_rng(1).normal(size=(7, 3, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batched = session.run(["emb"], {"x": x})[0]
    single = np.concatenate([session.run(["emb"], {"x": x[i : i + 1]})[0] for i in range(7)])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


def test_the_tap_is_the_last_spatial_map_before_the_embedding():
    model = _recogniser()
    io = graph.inspect_io(model)
    graph.make_batch_dynamic(model, io)
    shapes = graph.infer_shapes(model)
    assert graph.find_tap(model, io, shapes) == "fmap"  # not 'pooled': its 1×1 map is already pooled
    assert graph.resolve_tap(model, io, shapes, "relu1") == "fmap"  # a node name means its output
    assert graph.resolve_tap(model, io, shapes, "conv") == "conv"
    with pytest.raises(UnsupportedGraphError, match="neither a tensor nor a node"):
        graph.resolve_tap(model, io, shapes, "nowhere")


def test_no_spatial_map_means_a_clear_error():
    model = _recogniser(pool=False)  # the input goes straight into the global-kernel conv
    io = graph.inspect_io(model)
    graph.make_batch_dynamic(model, io)
    with pytest.raises(UnsupportedGraphError, match="no 4-D feature map .* --tap"):
        graph.find_tap(model, io, graph.infer_shapes(model))


def test_symbolic_image_size_needs_the_option():
    model = _recogniser()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "h", "w"
    with pytest.raises(UnsupportedGraphError, match="--image-size"):
        graph.inspect_io(model)
    graph.set_image_size(model, (8, 8))
    assert graph.inspect_io(model).image_size == (8, 8)
    with pytest.raises(UnsupportedGraphError, match="not the --image-size"):
        graph.set_image_size(model, (16, 16))
