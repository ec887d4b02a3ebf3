"""int8 serving variant of an exported contract model: onnxruntime static quantization (QDQ), calibrated on faces.

The recipe is the one onnxruntime recommends for x86 CPUs: its quantization pre-processing (shape inference and graph
clean-up) first, then QDQ static quantization with uint8 activations and per-channel int8 weights
(``QuantType.QUInt8`` / ``QInt8``), activation ranges calibrated on real faces fed through the project's one
preprocessing function (:func:`eqface.contract.preprocess`). The quantized file keeps the contract (float32 in,
float32 embedding and quality out) and the fp32 file's metadata (calibrated aggregation thresholds), and records its
precision under ``contract.PRECISION_KEY``.

The quality head can stay in fp32 (``keep_quality_head_fp32``, the default: the quality Spearman target needs every
bit the backbone features keep), and the embedding's flatten + L2 normalisation always does (quantized, it breaks
unit norm). Both are found from the graph alone, so the rules hold for any model that follows the contract, a BYOR
graft included (opset < 13 is raised to 13 for per-channel scales; unnamed nodes are named).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from eqface import contract
from eqface.data.sources import FaceSource
from eqface.export.prelu import decompose_prelu, fold_prelu_into_convs, rewritten_prelu_nodes
from eqface.export.thresholds import CalibrationFaces, model_data

FP32, INT8 = contract.PRECISIONS
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
PRELU_FORMS = ("fold", "rewrite", "kernel")  # QuantizationSettings.prelu
QUANTIZATION_KEY = "eqface_quantization"  # JSON: settings and calibration set of an int8 file
# The shipped model's data: the CelebA pack, whose last 40 identities are held out (``data.eval_identities``).
DEFAULT_CALIBRATION_PACK = "shared:celeba_wild_subset_rgb112.npz"
DEFAULT_HELD_OUT_IDENTITIES = 40
PER_CHANNEL_OPSET = 13


@dataclass(frozen=True)
class QuantizationSettings:
    """How an fp32 contract model becomes int8.

    Attributes:
        calibration_images: faces whose activation ranges set the int8 scales (evenly spaced over the source).
        batch_size: faces per calibration batch.
        method: onnxruntime's range estimator. ``percentile`` (99.999 %) clips the rare outliers that ``minmax``
            stretches the int8 range for: on the shipped model's held-out faces it lost 0.25 accuracy points and kept
            Spearman 0.991 where minmax lost 0.85 and 0.978 (bench/bench_int8.py).
        per_channel: one weight scale per output channel (depthwise convolutions need it to keep their accuracy).
        reduce_range: 7-bit weights, for CPUs without VNNI whose uint8×int8 dot product can saturate.
        keep_quality_head_fp32: leave the nodes only the quality output depends on unquantized.
        exclude_op_types: op types left in fp32 everywhere (e.g. ``PRelu``).
        prelu: what PRelu becomes (:mod:`eqface.export.prelu`; the values stay the same in each): ``fold`` folds it
            into the Convs that consume it, so that it runs in int8 kernels (QLinearConv, QLinearAdd) for twice the
            convolution work (on the shipped MobileFaceNet 2.9× the images/s of ``rewrite`` at batch 32 and 1.4× at
            batch 1, accuracy −0.12 points from fp32 where ``rewrite`` lost 0.35; bench/bench_int8.py);
            ``rewrite`` leaves it as Min/Mul/Add in fp32 between a DequantizeLinear and a QuantizeLinear;
            ``kernel`` keeps a PRelu node in fp32 (onnxruntime's slow kernel; a file from ``eqface export`` has
            the rewrite already, which then stays).
    """

    calibration_images: int = 256
    batch_size: int = 32
    method: str = "percentile"
    per_channel: bool = True
    reduce_range: bool = False
    keep_quality_head_fp32: bool = True
    exclude_op_types: tuple[str, ...] = ()
    prelu: str = "fold"

    def __post_init__(self) -> None:
        if self.calibration_images < 1 or self.batch_size < 1:
            raise ValueError("calibration_images and batch_size must be ≥ 1")
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; valid: {', '.join(CALIBRATION_METHODS)}")
        if self.prelu not in PRELU_FORMS:
            raise ValueError(f"unknown PRelu form {self.prelu!r}; valid: {', '.join(PRELU_FORMS)}")


DEFAULT_SETTINGS = QuantizationSettings()


@dataclass(frozen=True)
class QuantizationResult:
    path: Path
    settings: QuantizationSettings
    calibration_set: str
    fp32_nodes: tuple[str, ...]  # kept fp32 on purpose: embedding normalisation, quality head, PRelu rewrite, op types
    size_bytes: int


def pack_training_faces(pack: str | Path, held_out_identities: int) -> CalibrationFaces:
    """The identities of a pack that are not held out (the project's split: the last ``held_out_identities`` labels)."""
    from eqface import paths
    from eqface.data.packs import load_pack
    from eqface.data.sources import split_identities

    train, _ = split_identities(load_pack(paths.resolve(pack)), held_out_identities)
    return CalibrationFaces(train, f"{pack}: training identities (last {held_out_identities} ids held out)")


def model_training_faces(model_pt: str | Path) -> CalibrationFaces:
    """The training identities of the data a ``model.pt`` was trained on, as its stored configuration names them.

    Raises: as :func:`eqface.export.thresholds.model_data`.
    """
    name, _, train, _ = model_data(model_pt)
    return CalibrationFaces(train, f"{name}: training identities")


def evenly_spaced_indices(n: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over ``range(n)`` (all of them when ``count`` ≥ n)."""
    if n < 1:
        raise ValueError("the calibration source holds no faces")
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(np.int64))


def calibration_batches(
    source: FaceSource, indices: np.ndarray, image_size: tuple[int, int], batch_size: int
) -> Iterator[np.ndarray]:
    """The faces at ``indices`` as model inputs float32 [B, 3, H, W], preprocessed exactly as in serving."""
    for start in range(0, len(indices), batch_size):
        images = [source.image(int(i)) for i in indices[start : start + batch_size]]
        yield contract.preprocess(images, image_size)


def _producers(model) -> dict:
    return {out: node for node in model.graph.node for out in node.output}


def _ancestors(producers: dict, output: str, stop_at: tuple[str, ...] = ()) -> set[str]:
    """Names of the nodes ``output`` depends on; the walk does not enter nodes of the ``stop_at`` op types."""
    seen: set[str] = set()
    stack = [output]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen or node.op_type in stop_at:
            continue
        seen.add(node.name)
        stack.extend(node.input)
    return seen


def quality_head_nodes(model) -> tuple[str, ...]:
    """Names of the nodes that only the quality output depends on (the quality branch after it leaves the backbone)."""
    producers = _producers(model)
    only_quality = _ancestors(producers, contract.QUALITY_NAME) - _ancestors(producers, contract.EMBEDDING_NAME)
    return tuple(n.name for n in model.graph.node if n.name in only_quality)


def embedding_tail_nodes(model) -> tuple[str, ...]:
    """Names of the nodes between the embedding's last Conv and the embedding output (flatten, L2 normalisation).

    They stay fp32: quantizing the normalisation (its sum of squares, or the output itself) breaks the contract's
    unit-norm embeddings.
    """
    producers = _producers(model)
    tail = _ancestors(producers, contract.EMBEDDING_NAME, stop_at=("Conv",))
    tail -= _ancestors(producers, contract.QUALITY_NAME)
    return tuple(n.name for n in model.graph.node if n.name in tail)


def name_nodes(model) -> None:
    """Gives every unnamed node a unique name (quantization excludes nodes by name; grafted nodes often have none)."""
    taken = {n.name for n in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def model_precision(path: str | Path) -> str:
    """``int8`` for a file written by :func:`quantize_onnx`, ``fp32`` otherwise."""
    from eqface.export.thresholds import model_metadata

    return model_metadata(path).get(contract.PRECISION_KEY, FP32)


def quantize_onnx(
    fp32_path: str | Path,
    out: str | Path,
    faces: CalibrationFaces,
    settings: QuantizationSettings = DEFAULT_SETTINGS,
) -> QuantizationResult:
    """Writes the int8 QDQ version of a contract model, calibrated on ``faces`` (use training identities).

    The file is assembled beside ``out`` and renamed into place only after it passed
    :func:`eqface.export.onnx.verify_onnx` and still declares the fp32 file's shapes.

    Raises:
        eqface.export.onnx.OnnxContractError: the input (or the result) does not follow the contract.
        ValueError: the input is already quantized.
    """
    import onnx

    from eqface.export.onnx import OnnxContractError, verify_onnx

    fp32_path, out = Path(fp32_path), Path(out)
    if model_precision(fp32_path) != FP32:
        raise ValueError(f"{fp32_path} is already quantized ({contract.PRECISION_KEY} in its metadata)")
    spec = verify_onnx(fp32_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        _pre_process(fp32_path, prepared)
        model = _with_per_channel_opset(onnx.load(str(prepared)))
        name_nodes(model)
        excluded = _excluded_nodes(model, settings)
        if settings.prelu != "kernel":
            decompose_prelu(model)
        if settings.prelu == "fold":
            fold_prelu_into_convs(model, keep=frozenset(excluded))
        excluded += rewritten_prelu_nodes(model)  # what is left of a rewrite, here or at export, stays fp32
        onnx.save(model, str(prepared))
        reader = _reader(faces.source, spec.image_size, settings)
        _quantize_static(prepared, quantized, reader, excluded, settings)
        _copy_metadata(fp32_path, quantized, settings, faces.description)
        found = verify_onnx(quantized)
        if found != spec:
            raise OnnxContractError(f"the quantized model has {found}, the fp32 one {spec}")
        os.replace(quantized, out)
    return QuantizationResult(out, settings, faces.description, excluded, out.stat().st_size)


def _pre_process(source: Path, target: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # ONNX's own shape inference (plus onnxruntime's graph optimisation) is what a conv net needs; onnxruntime's
    # symbolic shape inference, meant for transformers' symbolic dims, fails on the exporter's Expand in the
    # L2 normalisation (TypeError in _infer_Expand, onnxruntime 1.32).
    quant_pre_process(str(source), str(target), skip_symbolic_shape=True)


def _with_per_channel_opset(model):
    # Per-channel DequantizeLinear (its ``axis``) needs opset 13; imported recognisers (BYOR) are often opset 11.
    import onnx

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), PER_CHANNEL_OPSET)
    return model if opset >= PER_CHANNEL_OPSET else onnx.version_converter.convert_version(model, PER_CHANNEL_OPSET)


def _excluded_nodes(model, settings: QuantizationSettings) -> tuple[str, ...]:
    excluded = set(embedding_tail_nodes(model))
    excluded |= set(quality_head_nodes(model)) if settings.keep_quality_head_fp32 else set()
    excluded |= {n.name for n in model.graph.node if n.op_type in settings.exclude_op_types}
    return tuple(n.name for n in model.graph.node if n.name in excluded)


def _reader(faces: FaceSource, image_size: tuple[int, int], settings: QuantizationSettings):
    from onnxruntime.quantization import CalibrationDataReader

    indices = evenly_spaced_indices(len(faces), settings.calibration_images)

    class FaceReader(CalibrationDataReader):
        """Feeds onnxruntime's calibrator one preprocessed batch of faces per call."""

        def __init__(self) -> None:
            self._batches = calibration_batches(faces, indices, image_size, settings.batch_size)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {contract.INPUT_NAME: batch}

    return FaceReader()


def _quantize_static(source: Path, target: Path, reader, excluded: tuple[str, ...], s: QuantizationSettings) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[s.method]
    quantize_static(
        str(source),
        str(target),
        reader,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=s.per_channel,
        reduce_range=s.reduce_range,
        calibrate_method=method,
        nodes_to_exclude=list(excluded),
        extra_options={"CalibMovingAverage": False},
    )


def _copy_metadata(fp32_path: Path, target: Path, settings: QuantizationSettings, calibration_set: str) -> None:
    import onnx

    from eqface.export.thresholds import model_metadata

    model = onnx.load(str(target))
    values = {
        **model_metadata(fp32_path),
        contract.PRECISION_KEY: INT8,
        QUANTIZATION_KEY: json.dumps(
            {**asdict(settings), "calibration_set": calibration_set, "format": "QDQ", "source": fp32_path.name},
            sort_keys=True,
        ),
    }
    del model.metadata_props[:]
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))


@dataclass(frozen=True)
class PrecisionComparison:
    """The int8 file against its fp32 source on the same faces (use held-out identities)."""

    faces: int
    pairs: int
    accuracy_fp32: float  # 10-fold verification accuracy on the same genuine/impostor pairs
    accuracy_int8: float
    quality_spearman: float  # Spearman(quality_int8, quality_fp32)
    embedding_cosine: float  # mean cosine between each face's int8 and fp32 embeddings

    @property
    def accuracy_drop_points(self) -> float:
        return 100.0 * (self.accuracy_fp32 - self.accuracy_int8)


def compare_precisions(
    fp32_path: str | Path, int8_path: str | Path, faces: FaceSource, max_pairs: int = 3000, seed: int = 0
) -> PrecisionComparison:
    """Verification accuracy of both files on the same pairs of ``faces``, and how far the int8 outputs move.

    Pairs: up to ``max_pairs`` genuine and as many impostor pairs, drawn once (``seed``) and scored by both files.
    """
    from scipy.stats import spearmanr

    from eqface.eval.pairs import cosine_scores, make_pairs
    from eqface.eval.verification import kfold_accuracy
    from eqface.export.thresholds import embed_faces

    indices = np.arange(len(faces))
    emb32, q32 = embed_faces(fp32_path, faces, indices)
    emb8, q8 = embed_faces(int8_path, faces, indices)
    labels = np.asarray(faces.labels)
    genuine = int(sum(c * (c - 1) // 2 for c in np.bincount(labels)))
    n = min(max_pairs, genuine)
    a, b, same = make_pairs(labels, n, n, np.random.default_rng(seed))
    accuracy = {name: kfold_accuracy(cosine_scores(e[a], e[b]), same).mean for name, e in (("32", emb32), ("8", emb8))}
    return PrecisionComparison(
        faces=len(faces),
        pairs=len(same),
        accuracy_fp32=accuracy["32"],
        accuracy_int8=accuracy["8"],
        quality_spearman=float(spearmanr(q8, q32).statistic),
        embedding_cosine=float(np.mean(np.sum(emb8 * emb32, axis=1))),
    )
