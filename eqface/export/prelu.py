"""PRelu in forms onnxruntime runs fast: rewritten as ``x + (slope − 1) · Min(x, 0)``, or folded into its Convs.

onnxruntime's CPU PRelu kernel is not vectorised: on MobileFaceNet (33 PRelu) it took 47 % of the fp32 time and 73 %
of the int8 time at batch 32 (bench/bench_int8.py profile), 15× slower than a Relu on the same tensor. Min, Mul
(slope broadcast per channel) and Add give the same result (x for x ≥ 0, slope · x below; exact up to one rounding of
the Add) at a third of the cost. ``eqface.export.onnx`` rewrites every exported fp32 file this way
(:func:`decompose_prelu`); :func:`rewritten_prelu_nodes` finds the rewrite again, by structure, in any file.

In an int8 file those element-wise ops would run in fp32 between a DequantizeLinear and a QuantizeLinear (70 % of the
int8 time at batch 32 went there), and quantizing them as they are cost accuracy. :func:`fold_prelu_into_convs`
moves each PRelu into the Convs that read it instead, as a sum of a linear part and a Relu part, which int8 runs in
its own kernels.
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


def fold_prelu_into_convs(model, keep: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Rewrites, in place, each PRelu that a Conv consumes so that int8 needs no fp32 element-wise work for it.

    PRelu(x) = a·x + (1 − a)·Relu(x) per channel, so a consuming Conv with weights W becomes two Convs, one on x with W
    scaled by a and one on Relu(x) with W scaled by 1 − a (both per input channel, the bias on the first), and their
    Add. Relu(x) comes from a copy of x's producer (a Conv or an Add) followed by a Relu, which the quantizer folds
    into that copy's output range. The values are the same up to float rounding; every new op has an int8 kernel
    (QLinearConv, QLinearAdd), for about twice the convolution work. Works on the rewritten form
    (:func:`decompose_prelu`, run it first); consumers named in ``keep`` (the fp32 quality head) and non-Conv consumers
    still read the rewrite's output, so its nodes stay where one does. Returns the names of the nodes it added.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    added: list[str] = []
    nodes = list(graph.node)
    for mul_name in [n.name for n in nodes if n.op_type == "Mul" and any(i.endswith(SLOPE_SUFFIX) for i in n.input)]:
        by_name = {n.name: n for n in nodes}
        producer = {o: n for n in nodes for o in n.output}
        consumers: dict[str, list] = {}
        for n in nodes:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        mul = by_name[mul_name]
        factor = next(i for i in mul.input if i.endswith(SLOPE_SUFFIX))
        minimum = producer.get(next(i for i in mul.input if i != factor))
        adds = [n for n in consumers.get(mul.output[0], []) if n.op_type == "Add"]
        if minimum is None or minimum.op_type != "Min" or len(adds) != 1:
            continue
        x, y = minimum.input[0], adds[0].output[0]
        source = producer.get(x)
        slope = numpy_helper.to_array(initializers[factor]).astype(np.float32).reshape(-1) + np.float32(1.0)
        folded = [
            q
            for q in consumers.get(y, [])
            if q.op_type == "Conv"
            and q.input[0] == y
            and q.input[1] in initializers
            and q.name not in keep
            and slope.size in (1, _in_channels(initializers[q.input[1]], q))  # one slope per channel, or one for all
        ]
        if source is None or source.op_type not in ("Conv", "Add") or len(source.output) != 1 or not folded:
            continue
        positive = f"{x}_positive"
        copy = helper.make_node(source.op_type, list(source.input), [f"{x}_copy"], name=f"{source.name}_copy")
        copy.attribute.extend(source.attribute)
        relu = helper.make_node("Relu", [f"{x}_copy"], [positive], name=f"{source.name}_relu")
        nodes[nodes.index(source) + 1 : nodes.index(source) + 1] = [copy, relu]
        added += [copy.name, relu.name]
        for q in folded:
            weight = numpy_helper.to_array(initializers[q.input[1]]).astype(np.float32)
            per_input = _per_input_channel(slope, weight.shape, _group(q))
            parts = []
            for suffix, scale, inputs in (("linear", per_input, [x]), ("relu", 1.0 - per_input, [positive])):
                name = f"{q.name}_{suffix}"
                w = numpy_helper.from_array(weight * scale, f"{name}_weight")  # per node: weights may be shared
                graph.initializer.append(w)
                initializers[w.name] = w
                bias = list(q.input[2:3]) if suffix == "linear" else []
                conv = helper.make_node("Conv", [*inputs, w.name, *bias], [f"{q.output[0]}_part_{suffix}"], name=name)
                conv.attribute.extend(q.attribute)
                parts.append(conv)
            total = helper.make_node("Add", [p.output[0] for p in parts], [q.output[0]], name=f"{q.name}_sum")
            nodes[nodes.index(q) : nodes.index(q) + 1] = [*parts, total]
            added += [*(p.name for p in parts), total.name]
        if y not in outputs and all(c.op_type == "Conv" and c in folded for c in consumers.get(y, [])):
            for n in (minimum, mul, adds[0]):
                nodes.remove(n)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return tuple(added)


def _in_channels(weight, conv) -> int:
    return int(weight.dims[1]) * _group(conv)


def _group(conv) -> int:
    return next((a.i for a in conv.attribute if a.name == "group"), 1)


def _per_input_channel(slope: np.ndarray, shape: tuple[int, ...], group: int) -> np.ndarray:
    """``slope`` (one per input channel, or one for all) laid out to multiply a Conv weight [O, C/g, kh, kw]."""
    out_channels, per_group = shape[0], shape[1]
    channels = np.arange(out_channels)[:, None] // (out_channels // group) * per_group + np.arange(per_group)[None, :]
    values = np.broadcast_to(slope, (group * per_group,)) if slope.size == 1 else slope
    return values[channels].reshape(out_channels, per_group, *([1] * (len(shape) - 2))).astype(np.float32)
