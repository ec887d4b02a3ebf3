"""Floating-point operations of one forward pass of an ONNX model, counted from its graph (Conv, Gemm, MatMul).

Multiply-accumulates count as two operations; element-wise ops (activations, BatchNorm folded or not, Add) are left
out, as the usual FLOP counts of face networks do. Shapes come from ONNX shape inference with the batch axis set to 1.
"""

from __future__ import annotations

import math
from pathlib import Path

COUNTED_OPS = ("Conv", "Gemm", "MatMul")


def count_flops(path: str | Path) -> dict[str, int]:
    """Operations per image of each counted op type (``COUNTED_OPS``) in the file's own graph (a QDQ file's Convs count
    like fp32 ones; one whose PRelu quantization folded into its Convs counts the extra Convs that brings).

    Raises:
        ValueError: a counted node's shapes could not be inferred.
    """
    import onnx

    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1  # one image: a symbolic batch axis would leave every shape unknown
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {init.name: tuple(init.dims) for init in inferred.graph.initializer}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    weights = _dequantized_weights(inferred)
    totals = dict.fromkeys(COUNTED_OPS, 0)
    for node in inferred.graph.node:
        if node.op_type not in COUNTED_OPS:
            continue
        try:
            a, b, out = (shapes[weights.get(n, n)] for n in (node.input[0], node.input[1], node.output[0]))
        except KeyError as exc:
            raise ValueError(f"{path}: no inferred shape for {exc} (node {node.name or node.op_type})") from exc
        totals[node.op_type] += _node_flops(node, a, b, out)
    return totals


def _dequantized_weights(graph_model) -> dict[str, str]:
    # In a QDQ file a Conv's weight input is a DequantizeLinear output; its shape is the quantized initializer's.
    return {n.output[0]: n.input[0] for n in graph_model.graph.node if n.op_type == "DequantizeLinear"}


def _node_flops(node, a: tuple[int, ...], b: tuple[int, ...], out: tuple[int, ...]) -> int:
    if node.op_type == "Conv":
        # out [N, Cout, *spatial], weight [Cout, Cin/group, *kernel]: each output value is Cin/group × kernel MACs
        return 2 * math.prod(out) * math.prod(b[1:])
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        inner = a[0] if trans_a else a[-1]
        return 2 * math.prod(out) * inner
    return 2 * math.prod(out) * a[-1]  # MatMul: [..., M, K] @ [..., K, N]
