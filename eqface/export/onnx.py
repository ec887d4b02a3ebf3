"""ONNX export of an EQFaceNet behind the inference contract, checked with onnx.checker and onnxruntime.

The exported file is self-contained (weights inside), has a dynamic batch axis, takes ``contract.INPUT_NAME``
float32 [N, 3, H, W] and returns ``contract.EMBEDDING_NAME`` [N, D] (L2-normalised) and ``contract.QUALITY_NAME``
[N, 1].
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eqface import contract
from eqface.contract import InferenceSpec
from eqface.export.prelu import decompose_prelu

DEFAULT_OPSET = 18
OUTPUT_NAMES = (contract.EMBEDDING_NAME, contract.QUALITY_NAME)
# The traced example batch: >1 so that the exporter cannot specialise the batch axis to a constant.
_EXAMPLE_BATCH = 2


class OnnxContractError(ValueError):
    """An ONNX file does not match the inference contract (names, dtypes or shapes)."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    spec: InferenceSpec
    opset: int
    size_bytes: int


def export_onnx(
    net: torch.nn.Module, spec: InferenceSpec, path: str | Path, opset: int = DEFAULT_OPSET
) -> ExportResult:
    """Exports ``net`` (an EQFaceNet or anything with the same ``forward``) to one self-contained ONNX file.

    The file is written next to ``path`` and renamed into place only after it passed :func:`verify_onnx`, so a
    failed export never leaves a half-written or non-conforming model behind.
    """
    import onnx  # heavy imports stay inside: importing eqface.export must be cheap

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    example = torch.zeros(_EXAMPLE_BATCH, *spec.input_shape, dtype=torch.float32)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".onnx")
    os.close(fd)
    # The exporter warns about torchvision ops it cannot register (torchvision is deliberately not installed, see
    # docs/architecture.md, "Facts") and about its own deprecated pytree API; neither concerns this network.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            torch.onnx.export(
                net,
                (example,),
                tmp,
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=[contract.INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                verbose=False,
            )
        model = onnx.load(tmp)
        _name_batch_axes(model)
        decompose_prelu(model)  # same values; onnxruntime's PRelu kernel was 44 % of the fp32 time (export/prelu.py)
        onnx.save(model, tmp)
        found = verify_onnx(tmp)
        if found != spec:
            raise OnnxContractError(f"exported model has {found}, expected {spec}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ExportResult(path=path, spec=spec, opset=opset, size_bytes=path.stat().st_size)


def export_model_file(model_pt: str | Path, out: str | Path, opset: int = DEFAULT_OPSET) -> ExportResult:
    """Exports a trained ``model.pt``/``final.pt`` (see :func:`eqface.train.checkpoint.load_model`)."""
    from eqface.train.checkpoint import load_model

    net, cfg = load_model(model_pt)
    spec = InferenceSpec(image_size=tuple(cfg.image_size), embedding_size=cfg.embedding_size)
    return export_onnx(net, spec, out, opset)


def _name_batch_axes(model) -> None:
    # The exporter names the dynamic axis after the torch.export symbol; one stable name reads better in Netron and
    # in Triton's model metadata.
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        if not dim.HasField("dim_value"):
            dim.dim_param = "batch"


def verify_onnx(path: str | Path) -> InferenceSpec:
    """Checks an ONNX file against the contract and returns the shapes it declares.

    Runs the full onnx.checker, compares names, dtypes and shapes with :mod:`eqface.contract`, and executes the
    model with onnxruntime at batch sizes 1 and 3 (dynamic batch axis, finite outputs, unit-norm embeddings,
    quality in [0, 1]).

    Raises:
        OnnxContractError: the file does not follow the contract; the message names the first difference.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise OnnxContractError(f"{path}: weights are stored outside the file (export with external_data=False)")
    onnx.checker.check_model(model, full_check=True)
    spec = _spec_from_graph(model, path)
    session = onnx_session(path)
    for batch in (1, 3):
        x = np.random.default_rng(batch).uniform(-1, 1, (batch, *spec.input_shape)).astype(contract.INPUT_DTYPE)
        embedding, quality = run_onnx(session, x)
        _check_outputs(embedding, quality, batch, spec, path)
    return spec


def _spec_from_graph(model, path: str | Path) -> InferenceSpec:
    import onnx

    def describe(values) -> dict[str, tuple[int, tuple]]:
        out = {}
        for v in values:
            dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim)
            out[v.name] = (v.type.tensor_type.elem_type, dims)
        return out

    inputs, outputs = describe(model.graph.input), describe(model.graph.output)
    if list(inputs) != [contract.INPUT_NAME]:
        raise OnnxContractError(f"{path}: inputs are {list(inputs)}, expected ['{contract.INPUT_NAME}']")
    if sorted(outputs) != sorted(OUTPUT_NAMES):
        raise OnnxContractError(f"{path}: outputs are {list(outputs)}, expected {list(OUTPUT_NAMES)}")
    float_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(contract.INPUT_DTYPE))
    for name, (elem_type, dims) in {**inputs, **outputs}.items():
        if elem_type != float_type:
            raise OnnxContractError(f"{path}: '{name}' has ONNX element type {elem_type}, expected float32")
        if not dims or isinstance(dims[0], int):
            raise OnnxContractError(f"{path}: '{name}' has shape {list(dims)}: the batch axis must be dynamic")
        if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            raise OnnxContractError(f"{path}: '{name}' has shape {list(dims)}: only the batch axis may be dynamic")
    in_dims, emb_dims, q_dims = inputs[contract.INPUT_NAME][1], *(outputs[n][1] for n in OUTPUT_NAMES)
    if len(in_dims) != 4 or in_dims[1] != contract.CHANNELS:
        raise OnnxContractError(f"{path}: input shape {list(in_dims)}, expected [N, {contract.CHANNELS}, H, W]")
    if len(emb_dims) != 2 or tuple(q_dims[1:]) != InferenceSpec().quality_shape:
        raise OnnxContractError(
            f"{path}: output shapes {list(emb_dims)} and {list(q_dims)}, expected [N, D] and [N, 1]"
        )
    spec = InferenceSpec(image_size=(in_dims[2], in_dims[3]), embedding_size=emb_dims[1])
    return spec


def _check_outputs(embedding: np.ndarray, quality: np.ndarray, batch: int, spec: InferenceSpec, path) -> None:
    if embedding.shape != (batch, *spec.embedding_shape) or quality.shape != (batch, *spec.quality_shape):
        raise OnnxContractError(
            f"{path}: batch {batch} gave shapes {embedding.shape} and {quality.shape} from onnxruntime"
        )
    if not (np.isfinite(embedding).all() and np.isfinite(quality).all()):
        raise OnnxContractError(f"{path}: onnxruntime produced non-finite outputs")
    norms = np.linalg.norm(embedding, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        span = f"{norms.min():.4f}..{norms.max():.4f}"
        raise OnnxContractError(f"{path}: embeddings are not L2-normalised (norms {span})")
    if quality.min() < 0.0 or quality.max() > 1.0:
        raise OnnxContractError(f"{path}: quality outside [0, 1] ({quality.min():.4f}..{quality.max():.4f})")


def onnx_session(path: str | Path | bytes, threads: int = 0, spinning: bool = True):
    """An onnxruntime CPU session of a file (or a serialised model); ``threads`` = 0 lets onnxruntime use every core.

    ``spinning`` (onnxruntime's default) lets idle intra-op threads busy-wait for the next operator.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def run_onnx(session, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs the contract model: float32 [N, 3, H, W] in, (embedding [N, D], quality [N, 1]) out."""
    embedding, quality = session.run(list(OUTPUT_NAMES), {contract.INPUT_NAME: x})
    return embedding, quality
