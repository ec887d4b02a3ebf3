"""ONNX graph surgery on a pretrained recogniser: its image input and embedding output, a dynamic batch axis, the tap.

All functions take and change an ``onnx.ModelProto`` in memory; no file I/O. Graphs outside what an ArcFace-style
recogniser looks like raise :class:`UnsupportedGraphError` with what was found.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from eqface import contract

BATCH_PARAM = "batch"


class UnsupportedGraphError(ValueError):
    """The ONNX graph is not a recogniser this importer can handle; the message says what it found."""


@dataclass(frozen=True)
class GraphIO:
    """The recogniser's image input [N, 3, H, W] and embedding output [N, D]."""

    input_name: str
    output_name: str
    image_size: tuple[int, int]
    embedding_size: int
    fixed_batch: int | None  # the batch size the file declared, None when already dynamic


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value.type.tensor_type.shape.dim]


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers (old exporters list weights as inputs too)."""
    weights = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in weights]


def inspect_io(model: onnx.ModelProto, output_name: str | None = None) -> GraphIO:
    """Checks for one float image input [N, 3, H, W] and one embedding output [N, D] (``output_name`` picks one)."""
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        names = [f"{v.name} {_dims(v)}" for v in inputs]
        raise UnsupportedGraphError(f"expected one image input [N, 3, H, W], the graph has {len(inputs)}: {names}")
    image = inputs[0]
    outputs = list(model.graph.output)
    if output_name is not None:
        outputs = [v for v in outputs if v.name == output_name]
        if not outputs:
            valid = [v.name for v in model.graph.output]
            raise UnsupportedGraphError(f"no graph output named {output_name!r}; outputs: {valid}")
    if len(outputs) != 1:
        names = [f"{v.name} {_dims(v)}" for v in outputs]
        raise UnsupportedGraphError(f"expected one embedding output [N, D], the graph has {len(outputs)}: {names}")
    embedding = outputs[0]
    float_type = onnx.TensorProto.FLOAT
    for value in (image, embedding):
        if value.type.tensor_type.elem_type != float_type:
            raise UnsupportedGraphError(f"'{value.name}' is not float32 (ONNX type {value.type.tensor_type.elem_type})")
    in_dims, out_dims = _dims(image), _dims(embedding)
    static = all(isinstance(d, int) and d > 0 for d in in_dims[1:])
    if len(in_dims) != 4 or in_dims[1] != contract.CHANNELS or not static:
        raise UnsupportedGraphError(
            f"input '{image.name}' has shape {in_dims}; expected [N, {contract.CHANNELS}, H, W] with fixed H and W "
            "(give --image-size H W when they are symbolic)"
        )
    if len(out_dims) != 2 or not (isinstance(out_dims[1], int) and out_dims[1] > 0):
        raise UnsupportedGraphError(f"output '{embedding.name}' has shape {out_dims}; expected [N, D] with fixed D")
    fixed = in_dims[0] if isinstance(in_dims[0], int) and in_dims[0] > 0 else None
    return GraphIO(image.name, embedding.name, (in_dims[2], in_dims[3]), out_dims[1], fixed)


def set_image_size(model: onnx.ModelProto, size: tuple[int, int]) -> None:
    """Fixes H and W of the single image input (for graphs exported with symbolic spatial axes)."""
    inputs = graph_inputs(model)
    if len(inputs) != 1 or len(_dims(inputs[0])) != 4:
        return  # inspect_io reports the real problem
    dims = inputs[0].type.tensor_type.shape.dim
    for axis, want in zip((2, 3), size):
        if dims[axis].HasField("dim_value") and dims[axis].dim_value != want:
            raise UnsupportedGraphError(
                f"input '{inputs[0].name}' is {dims[2].dim_value}×{dims[3].dim_value}, not the --image-size "
                f"{size[0]}×{size[1]}"
            )
        dims[axis].Clear()
        dims[axis].dim_value = want


def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every tensor whose value is known without running the graph: initializers and Constant node outputs."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def make_batch_dynamic(model: onnx.ModelProto, io: GraphIO) -> list[str]:
    """Makes axis 0 of the input and output symbolic and rewrites Reshape targets that hard-code the old batch.

    A Reshape whose constant target starts with the exported batch size gets 0 there ("copy the input's axis 0"),
    which is the batch for every recogniser seen so far (``x.view(x.size(0), -1)`` traced at batch 1). Other
    batch-dependent constants are not rewritten: the importer's batch-parity run reports them. Returns one line per
    rewrite.
    """
    for value in (*graph_inputs(model), *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = BATCH_PARAM
    del model.graph.value_info[:]  # shapes recorded at the old batch size would now be wrong
    if io.fixed_batch is None:
        return []
    constants, fixes = constant_values(model), []
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        target = constants[node.input[1]]
        if target.ndim != 1 or target.size < 2 or int(target[0]) != io.fixed_batch:
            continue
        allow_zero = any(a.name == "allowzero" and a.i == 1 for a in node.attribute)
        if allow_zero and -1 in target[1:]:
            raise UnsupportedGraphError(f"Reshape '{node.name}' hard-codes the batch in {target.tolist()}")
        new = target.copy()
        new[0] = -1 if allow_zero else 0
        name = f"{node.input[1]}__dynamic_batch"
        model.graph.initializer.append(numpy_helper.from_array(new.astype(np.int64), name))
        node.input[1] = name
        fixes.append(f"Reshape '{node.name or node.output[0]}': {target.tolist()} → {new.tolist()}")
    _drop_unused_initializers(model)
    return fixes


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {v.name for v in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def infer_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Shape of every tensor onnx shape inference can find (symbolic batch axes stay symbols)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # onnx raises InferenceError and others for graphs it cannot type
        raise UnsupportedGraphError(f"onnx shape inference failed on the graph: {exc}") from None
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    return {v.name: _dims(v) for v in values}


def ancestors(model: onnx.ModelProto, tensor: str) -> dict[str, int]:
    """Tensors that ``tensor`` depends on (itself included), each with the index of the node producing it."""
    producer = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    found: dict[str, int] = {}
    stack = [tensor]
    while stack:
        name = stack.pop()
        if name in found or name not in producer:
            continue
        found[name] = producer[name]
        stack.extend(i for i in model.graph.node[producer[name]].input if i)
    return found


def _is_spatial_map(dims: list) -> bool:
    return (
        len(dims) == 4
        and all(isinstance(d, int) and d > 0 for d in dims[1:])
        and dims[2] * dims[3] > 1  # a 1×1 map is already pooled: it says nothing about where the face is poor
    )


def find_tap(model: onnx.ModelProto, io: GraphIO, shapes: dict[str, list]) -> str:
    """The last 4-D feature map with spatial size > 1 that the embedding depends on (the pre-pooling map)."""
    candidates = {
        name: index
        for name, index in ancestors(model, io.output_name).items()
        if name != io.input_name and _is_spatial_map(shapes.get(name, []))
    }
    if not candidates:
        raise UnsupportedGraphError(
            f"no 4-D feature map [N, C, h, w] with h·w > 1 feeds '{io.output_name}' (or shape inference could not "
            "size one); name the tensor or node to tap with --tap"
        )
    return max(candidates, key=lambda name: (candidates[name], name))


def resolve_tap(model: onnx.ModelProto, io: GraphIO, shapes: dict[str, list], name: str) -> str:
    """A user-named tap: a tensor name, or a node name (its first output); checked to be [N, C, ...] and sized."""
    nodes = {node.name: node for node in model.graph.node if node.name}
    tensor = name
    if name not in shapes and name in nodes:
        tensor = nodes[name].output[0]
    if tensor not in shapes:
        maps = [n for n, d in shapes.items() if _is_spatial_map(d)][-5:]
        raise UnsupportedGraphError(
            f"--tap {name!r} is neither a tensor nor a node of the graph; last 4-D maps: {maps}"
        )
    dims = shapes[tensor]
    if len(dims) < 2 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise UnsupportedGraphError(f"tap '{tensor}' has shape {dims}; expected [N, C, ...] with fixed sizes after N")
    if tensor not in ancestors(model, io.output_name):
        raise UnsupportedGraphError(f"tap '{tensor}' does not feed the embedding output '{io.output_name}'")
    return tensor


def add_output(model: onnx.ModelProto, tensor: str, dims: list) -> None:
    """Exposes ``tensor`` as a graph output [batch, dims[1:]...]."""
    if any(v.name == tensor for v in model.graph.output):
        raise UnsupportedGraphError(f"'{tensor}' is already a graph output")
    shape = [BATCH_PARAM, *dims[1:]]
    model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, shape))
