"""One served model: the quality head grafted onto the imported recogniser's graph, behind the one inference contract.

The grafted graph takes the contract's input (``contract.INPUT_NAME``: RGB, (x − 127.5)/128) and converts it inside
the graph into what the recogniser expects (channel flip when it wants BGR, then ``x·scale + bias`` per channel, see
``InputNormalisation.from_contract``), so the Triton configs, the preprocess model and the services stay unchanged.
Outputs: ``contract.EMBEDDING_NAME`` (the recogniser's embedding, L2-normalised) and ``contract.QUALITY_NAME``
(the head: Flatten → Gemm with the BatchNorm folded in → ReLU → Gemm → Sigmoid).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from eqface import contract
from eqface.byor.graph import BATCH_PARAM
from eqface.byor.recogniser import RecogniserManifest
from eqface.models.quality import QualityHead

PREFIX = "eqface_graft/"
RENAMED = "recogniser/"
_NORM_EPS = 1e-12  # as torch.nn.functional.normalize


def fold_head(head: QualityHead) -> dict[str, np.ndarray]:
    """The head's weights for ONNX, with the eval-mode BatchNorm folded into the first linear layer."""
    if head.reduce is not None:
        raise ValueError("grafting supports the flat quality head (no 1×1 channel reduction)")
    bn = head.bn
    with torch.no_grad():
        factor = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)).numpy()
        w1 = head.fc1.weight.double().numpy() * factor[:, None]
        b1 = (head.fc1.bias.double().numpy() - bn.running_mean.double().numpy()) * factor + bn.bias.double().numpy()
        w2, b2 = head.fc2.weight.double().numpy(), head.fc2.bias.double().numpy()
    return {k: v.astype(np.float32) for k, v in {"w1": w1, "b1": b1, "w2": w2, "b2": b2}.items()}


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {v.name for v in graph.input}
    return names | {name for node in graph.node for name in (*node.input, *node.output)}


def graft(model: onnx.ModelProto, manifest: RecogniserManifest, head: QualityHead) -> onnx.ModelProto:
    """Returns the contract model built from the imported recogniser ``model`` and a trained ``head``."""
    if head.fc1.in_features != manifest.tap_features:
        raise ValueError(f"the head takes {head.fc1.in_features} features, the tap has {manifest.tap_features}")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    rec_in, rec_emb, tap = manifest.input_name, manifest.embedding_name, manifest.tap_name
    taken = _all_names(g)
    if any(name.startswith(PREFIX) for name in taken):
        raise ValueError(f"the recogniser already has tensors named {PREFIX}*: was it grafted before?")
    for name in (contract.INPUT_NAME, contract.EMBEDDING_NAME, contract.QUALITY_NAME):
        if name in taken:  # the recogniser's own tensors give way to the contract's names
            _rename(g, name, RENAMED + name)
    rec_in, rec_emb, tap = (grafted_name(n) for n in (rec_in, rec_emb, tap))
    del g.input[:]
    del g.output[:]
    del g.value_info[:]
    h, w = manifest.image_size
    scale, bias = manifest.normalisation.from_contract()
    weights = fold_head(head)
    consts = {
        "scale": scale.reshape(1, 3, 1, 1),
        "bias": bias.reshape(1, 3, 1, 1),
        "bgr": np.array([2, 1, 0], np.int64),
        "ones": np.ones((manifest.embedding_size, 1), np.float32),
        "eps": np.array(_NORM_EPS, np.float32),
        **weights,
    }
    g.initializer.extend(numpy_helper.from_array(v, PREFIX + k) for k, v in consts.items())
    c = {k: PREFIX + k for k in consts}
    pixels = contract.INPUT_NAME
    before = []  # the input conversion runs before the recogniser's nodes (ONNX wants them topologically sorted)
    if manifest.normalisation.flips_channels:
        before.append(helper.make_node("Gather", [pixels, c["bgr"]], [PREFIX + "flipped"], axis=1))
        pixels = PREFIX + "flipped"
    before += [
        helper.make_node("Mul", [pixels, c["scale"]], [PREFIX + "scaled"]),
        helper.make_node("Add", [PREFIX + "scaled", c["bias"]], [rec_in]),
    ]
    after = [
        # ‖e‖ by a MatMul with ones: the same ops in every opset (ReduceSum's signature changed in opset 13).
        helper.make_node("Mul", [rec_emb, rec_emb], [PREFIX + "squares"]),
        helper.make_node("MatMul", [PREFIX + "squares", c["ones"]], [PREFIX + "sum_squares"]),
        helper.make_node("Sqrt", [PREFIX + "sum_squares"], [PREFIX + "norm"]),
        helper.make_node("Max", [PREFIX + "norm", c["eps"]], [PREFIX + "safe_norm"]),
        helper.make_node("Div", [rec_emb, PREFIX + "safe_norm"], [contract.EMBEDDING_NAME]),
        helper.make_node("Flatten", [tap], [PREFIX + "tap_flat"], axis=1),
        helper.make_node("Gemm", [PREFIX + "tap_flat", c["w1"], c["b1"]], [PREFIX + "hidden"], transB=1),
        helper.make_node("Relu", [PREFIX + "hidden"], [PREFIX + "hidden_relu"]),
        helper.make_node("Gemm", [PREFIX + "hidden_relu", c["w2"], c["b2"]], [PREFIX + "logit"], transB=1),
        helper.make_node("Sigmoid", [PREFIX + "logit"], [contract.QUALITY_NAME]),
    ]
    nodes = [*before, *g.node, *after]
    del g.node[:]
    g.node.extend(nodes)
    fp32 = onnx.TensorProto.FLOAT
    g.input.append(helper.make_tensor_value_info(contract.INPUT_NAME, fp32, [BATCH_PARAM, 3, h, w]))
    g.output.extend(
        [
            helper.make_tensor_value_info(contract.EMBEDDING_NAME, fp32, [BATCH_PARAM, manifest.embedding_size]),
            helper.make_tensor_value_info(contract.QUALITY_NAME, fp32, [BATCH_PARAM, 1]),
        ]
    )
    del model.metadata_props[:]
    model.metadata_props.add(key="eqface.byor", value=json.dumps(manifest.to_dict()))
    model.metadata_props.add(
        key="eqface.contract",
        value=f"input RGB (x - {contract.PIXEL_MEAN}) / {contract.PIXEL_SCALE}; converted in-graph to "
        f"{manifest.normalisation.describe()}",
    )
    onnx.checker.check_model(model)
    return model


def _contract_names() -> tuple[str, ...]:
    return (contract.INPUT_NAME, contract.EMBEDDING_NAME, contract.QUALITY_NAME)


def grafted_name(name: str) -> str:
    """What the recogniser's tensor ``name`` is called inside the grafted graph (contract names give way)."""
    return RENAMED + name if name in _contract_names() else name
