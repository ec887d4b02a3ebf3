"""PRelu rewritten as ``x + (slope − 1) · Min(x, 0)``: the same values, in element-wise ops onnxruntime runs fast.

onnxruntime's CPU PRelu kernel is not vectorised: on MobileFaceNet (33 PRelu) it took 47 % of the fp32 time and 73 %
of the int8 time at batch 32 (bench/bench_int8.py profile), 15× slower than a Relu on the same tensor. Min, Mul
(slope broadcast per channel) and Add give the same result (x for x ≥ 0, slope · x below; exact up to one rounding of
the Add) at a third of the cost. ``eqface.export.onnx`` rewrites every exported fp32 file this way; in an int8 file the
rewritten nodes stay fp32, as PRelu did (``rewritten_prelu_nodes`` finds them, by structure, in any file).
"""

from __future__ import annotations

import numpy as np

SLOPE_SUFFIX = "_slope_minus_one"  # the initializer (slope − 1) of a rewritten PRelu


def decompose_prelu(model) -> tuple[str, ...]:
    """Replaces, in place, every PRelu whose slope is an initializer; returns the names of the nodes it added."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    added: list[str] = []
    nodes = []
    for node in graph.node:
        slope = initializers.get(node.input[1]) if node.op_type == "PRelu" else None
        if slope is None:
            nodes.append(node)
            continue
        base = node.name or node.output[0]
        x, y = node.input[0], node.output[0]
        zero, factor = f"{base}_zero", f"{base}{SLOPE_SUFFIX}"
        values = numpy_helper.to_array(slope).astype(np.float32)
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.zeros((), np.float32), zero),
                numpy_helper.from_array(values - np.float32(1.0), factor),
            ]
        )
        new = [
            helper.make_node("Min", [x, zero], [f"{base}_negative"], name=f"{base}_min"),
            helper.make_node("Mul", [f"{base}_negative", factor], [f"{base}_scaled"], name=f"{base}_mul"),
            helper.make_node("Add", [x, f"{base}_scaled"], [y], name=f"{base}_add"),
        ]
        nodes.extend(new)
        added.extend(n.name for n in new)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return tuple(added)


def rewritten_prelu_nodes(model) -> tuple[str, ...]:
    """The names of the Min, Mul and Add nodes of every PRelu that ``decompose_prelu`` rewrote (in this file or
    before it was written), found by structure: the Mul that scales by a ``*_slope_minus_one`` initializer, the Min
    that feeds it and the Add that consumes it. Nodes without a name are skipped (``quantize.name_nodes`` names all)."""
    graph = model.graph
    slopes = {i.name for i in graph.initializer if i.name.endswith(SLOPE_SUFFIX)}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found: list[str] = []
    for mul in graph.node:
        if mul.op_type != "Mul" or not slopes & set(mul.input):
            continue
        (negative,) = [i for i in mul.input if i not in slopes]
        minimum = producer.get(negative)
        adds = [n for n in consumers.get(mul.output[0], []) if n.op_type == "Add"]
        if minimum is None or minimum.op_type != "Min" or len(adds) != 1:
            continue
        found += [n.name for n in (minimum, mul, adds[0]) if n.name]
    return tuple(found)
