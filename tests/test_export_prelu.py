"""PRelu rewritten as Min/Mul/Add: the same values for any slope (negative, above one) and batch."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from eqface.export.onnx import onnx_session
from eqface.export.prelu import decompose_prelu, fold_prelu_into_convs, rewritten_prelu_nodes


def _prelu_model(slope: np.ndarray) -> onnx.ModelProto:
    nodes = [
        helper.make_node("PRelu", ["x", "s"], ["p"], name="first"),
        helper.make_node("PRelu", ["p", "s"], ["y"], name="second"),  # the same slope used twice
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4, 2, 3]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "g", io[:1], io[1:], [numpy_helper.from_array(slope, "s")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_decomposed_prelu_gives_the_same_values():
    slope = np.array([-1.5, 0.0, 0.25, 2.5], np.float32).reshape(4, 1, 1)
    model = _prelu_model(slope)
    x = np.random.default_rng(0).normal(size=(3, 4, 2, 3)).astype(np.float32)
    x[0, :, 0, 0] = 0.0
    expected = onnx_session(model.SerializeToString()).run(None, {"x": x})[0]
    added = decompose_prelu(model)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Min", "Mul", "Add"] * 2
    assert added == tuple(n.name for n in model.graph.node) and added[0] == "first_min"
    assert "s" not in {i.name for i in model.graph.initializer}  # the unused slope is dropped
    got = onnx_session(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    once = np.where(x > 0, x, slope * x)
    np.testing.assert_allclose(got, np.where(once > 0, once, slope * once), rtol=1e-6, atol=1e-6)


def test_a_prelu_whose_slope_is_computed_is_left_alone():
    model = _prelu_model(np.ones((4, 1, 1), np.float32))
    model.graph.node.insert(0, helper.make_node("Identity", ["s"], ["s_copy"], name="copy"))
    model.graph.node[1].input[1] = "s_copy"
    assert decompose_prelu(model) == ("second_min", "second_mul", "second_add")
    assert [n.op_type for n in model.graph.node] == ["Identity", "PRelu", "Min", "Mul", "Add"]


def test_the_rewritten_nodes_are_found_again_in_a_saved_file(tmp_path) -> None:
    """Export rewrites PRelu; quantization must find the rewrite's nodes in the file it reads to keep them fp32."""
    slope = np.array([0.1, 0.2, 0.3, 0.4], np.float32).reshape(4, 1, 1)
    model = _prelu_model(slope)
    added = decompose_prelu(model)
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert sorted(rewritten_prelu_nodes(onnx.load(str(tmp_path / "m.onnx")))) == sorted(added)
    assert rewritten_prelu_nodes(_prelu_model(slope)) == ()  # nothing rewritten yet


def _conv(name: str, x: str, w: str, out: str, group: int = 1, bias: str | None = None):
    inputs = [x, w] + ([bias] if bias else [])
    return helper.make_node("Conv", inputs, [out], name=name, group=group, pads=[1, 1, 1, 1], kernel_shape=[3, 3])


def _conv_prelu_net() -> onnx.ModelProto:
    """conv → PRelu → depthwise conv → PRelu → {conv, (grouped conv, Relu: not a Conv consumer) → outputs}."""
    rng = np.random.default_rng(1)
    weights = {
        "w1": rng.normal(size=(6, 3, 3, 3)),
        "b1": rng.normal(size=6),
        "wd": rng.normal(size=(6, 1, 3, 3)),
        "s1": np.array([-0.5, 0.0, 0.25, 1.0, 1.5, 0.1]).reshape(6, 1, 1),
        "s2": np.array([0.3]),  # one slope for every channel
        "w3": rng.normal(size=(4, 6, 3, 3)),
        "b3": rng.normal(size=4),
        "wg": rng.normal(size=(4, 3, 3, 3)),  # 2 groups of 3 input channels
    }
    nodes = [
        _conv("c1", "x", "w1", "y1", bias="b1"),
        helper.make_node("PRelu", ["y1", "s1"], ["p1"], name="prelu1"),
        _conv("dw", "p1", "wd", "y2", group=6),
        helper.make_node("PRelu", ["y2", "s2"], ["p2"], name="prelu2"),
        _conv("c3", "p2", "w3", "out", bias="b3"),
        _conv("grouped", "p2", "wg", "out_grouped", group=2),
        helper.make_node("Relu", ["p2"], ["out_relu"], name="relu"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 5, 4])]
    shapes = {"out": 4, "out_grouped": 4, "out_relu": 6}
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", c, 5, 4]) for n, c in shapes.items()]
    init = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, "g", inputs, outputs, init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_prelu_folded_into_its_convs_gives_the_same_values():
    model = _conv_prelu_net()
    x = np.random.default_rng(2).normal(size=(2, 3, 5, 4)).astype(np.float32)
    expected = onnx_session(model.SerializeToString()).run(None, {"x": x})
    decompose_prelu(model)
    fold_prelu_into_convs(model)  # the grouped conv (2 groups of 3 channels) is folded too
    assert [n.op_type for n in model.graph.node].count("Conv") == 1 + 1 + 2 + 2 + 2
    got = onnx_session(model.SerializeToString()).run(None, {"x": x})
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_kept_consumers_read_the_rewritten_prelu():
    model = _conv_prelu_net()
    x = np.random.default_rng(2).normal(size=(2, 3, 5, 4)).astype(np.float32)
    expected = onnx_session(model.SerializeToString()).run(None, {"x": x})
    decompose_prelu(model)
    added = fold_prelu_into_convs(model, keep=frozenset({"grouped"}))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    # prelu1 is gone: its only consumer (dw) became dw_linear + dw_relu + their Add; the copy of c1 feeds a Relu.
    # prelu2 stays (Min/Mul/Add) for the kept grouped conv and the Relu; c3 reads its two parts instead.
    assert ops.count("Min") == 1 and ops.count("Conv") == 1 + 1 + 2 + 2 + 1
    names = {n.name for n in model.graph.node}
    assert {"c1_copy", "c1_relu", "dw_linear", "dw_relu", "dw_sum", "dw_sum_copy", "c3_linear", "c3_sum"} <= names
    assert {"dw", "c3", "prelu1_min"}.isdisjoint(names) and {"grouped", "prelu2_min"} <= names
    assert set(added) == names - {"c1", "grouped", "relu", "prelu2_min", "prelu2_mul", "prelu2_add"}
    got = onnx_session(model.SerializeToString()).run(None, {"x": x})
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_a_prelu_without_a_foldable_producer_stays_rewritten():
    model = _prelu_model(np.full((4, 1, 1), 0.2, np.float32))  # PRelu on the graph input: nothing to copy
    decompose_prelu(model)
    before = [n.name for n in model.graph.node]
    assert fold_prelu_into_convs(model) == ()
    assert [n.name for n in model.graph.node] == before


def test_a_slope_that_is_not_per_channel_is_not_folded():
    """A slope broadcast along the width (one per column) cannot scale a Conv's input channels: left rewritten."""
    rng = np.random.default_rng(3)
    init = {"w1": rng.normal(size=(4, 3, 3, 3)), "s": np.array([0.1, 0.5, 0.9]), "w2": rng.normal(size=(2, 4, 3, 3))}
    nodes = [
        _conv("c1", "x", "w1", "y1"),
        helper.make_node("PRelu", ["y1", "s"], ["p"], name="prelu"),
        _conv("c2", "p", "w2", "out"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 5, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2, 5, 3])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in init.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    decompose_prelu(model)
    assert fold_prelu_into_convs(model) == ()
    assert [n.op_type for n in model.graph.node] == ["Conv", "Min", "Mul", "Add", "Conv"]
