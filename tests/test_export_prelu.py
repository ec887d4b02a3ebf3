"""PRelu rewritten as Min/Mul/Add: the same values for any slope (negative, above one) and batch."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from eqface.export.onnx import onnx_session
from eqface.export.prelu import decompose_prelu, rewritten_prelu_nodes


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
