"""``import_onnx``: a pretrained ArcFace-style ONNX recogniser → an imported recogniser folder (see ``recogniser``).

Steps: check the graph's input and output, make the batch axis dynamic, expose the tap, prove batch 7 equals seven
batch-1 runs of the original file, check the stated normalisation on real faces, then write the graph and manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqface.byor import graph
from eqface.byor.norm_check import DEFAULT_MAX_DEFICIT, DEFAULT_MIN_AUC, NormalisationCheckError, check_normalisation
from eqface.byor.normalisation import InputNormalisation
from eqface.byor.recogniser import (
    DEFAULT_EVAL_IDENTITIES,
    DEFAULT_PACK,
    MANIFEST_FILE,
    MODEL_FILE,
    RecogniserManifest,
    write_json_atomic,
)

PARITY_BATCH = 7
# onnxruntime picks different kernels per batch size; differences are float32 rounding, relative to the output scale.
BATCH_PARITY_RTOL = 1e-4
METADATA_KEY = "eqface.byor"


@dataclass(frozen=True)
class CheckOptions:
    """The normalisation check on real faces (``faces`` of the pack's ``eval_identities`` held-out identities)."""

    pack: str = DEFAULT_PACK
    eval_identities: int = DEFAULT_EVAL_IDENTITIES
    faces: int = 300
    min_auc: float = DEFAULT_MIN_AUC
    max_deficit: float = DEFAULT_MAX_DEFICIT
    enabled: bool = True


@dataclass(frozen=True)
class ImportOptions:
    normalisation: InputNormalisation = InputNormalisation()
    tap: str | None = None  # tensor or node name; None: the last spatial feature map before the embedding
    output: str | None = None  # which graph output is the embedding, when there are several
    image_size: tuple[int, int] | None = None  # required when the graph's H and W are symbolic
    check: CheckOptions = CheckOptions()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_faces(options: CheckOptions, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``options.faces`` held-out faces of the pack, evenly spread over its held-out identities: (uint8, labels)."""
    from eqface import paths
    from eqface.contract import fit_to_size
    from eqface.data.packs import load_pack
    from eqface.data.sources import split_identities

    source = load_pack(paths.resolve(options.pack))
    _, held = split_identities(source, options.eval_identities)
    held = held if held is not None else source
    picks = np.unique(np.linspace(0, len(held) - 1, min(options.faces, len(held))).astype(np.int64))
    images = np.stack([fit_to_size(held.image(int(i)), image_size) for i in picks])
    return images, held.labels[picks]


def import_onnx(
    model_path: str | Path, out_dir: str | Path, options: ImportOptions = ImportOptions()
) -> RecogniserManifest:
    """Imports ``model_path`` into ``out_dir`` (``recogniser.onnx`` + ``recogniser.json``) and returns the manifest.

    Raises:
        graph.UnsupportedGraphError: the graph is not a single-input, single-embedding recogniser, or its batch axis
            cannot be made dynamic.
        NormalisationCheckError: the stated normalisation fails the check on real faces.
    """
    import onnx

    model_path, out_dir = Path(model_path), Path(out_dir)
    if not model_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {model_path}")
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not a model
        raise graph.UnsupportedGraphError(f"{model_path} is not a readable ONNX model: {exc}") from None
    if options.image_size is not None:
        graph.set_image_size(model, options.image_size)
    io = graph.inspect_io(model, options.output)
    _keep_only_output(model, io.output_name)
    fixes = graph.make_batch_dynamic(model, io)
    shapes = graph.infer_shapes(model)
    tap = (
        graph.find_tap(model, io, shapes) if options.tap is None else graph.resolve_tap(model, io, shapes, options.tap)
    )
    graph.add_output(model, tap, shapes[tap])
    manifest = RecogniserManifest(
        source=str(model_path.resolve()),
        source_sha256=sha256_of(model_path),
        input_name=io.input_name,
        embedding_name=io.output_name,
        tap_name=tap,
        image_size=io.image_size,
        embedding_size=io.embedding_size,
        tap_shape=tuple(int(d) for d in shapes[tap][1:]),
        normalisation=options.normalisation,
        batch_fixes=tuple(fixes),
    )
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(manifest.to_dict()))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise graph.UnsupportedGraphError(f"the imported graph is not valid ONNX: {exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{MODEL_FILE}.", suffix=".onnx")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        manifest = _verify(model_path, Path(tmp), manifest, options)
        os.replace(tmp, out_dir / MODEL_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_json_atomic(manifest.to_dict(), out_dir / MANIFEST_FILE)  # written last: its presence means "complete"
    return manifest


def _keep_only_output(model, name: str) -> None:
    keep = [v for v in model.graph.output if v.name == name]
    del model.graph.output[:]
    model.graph.output.extend(keep)


def _verify(original: Path, imported: Path, manifest: RecogniserManifest, options: ImportOptions) -> RecogniserManifest:
    from dataclasses import replace

    from eqface.export.onnx import onnx_session

    session = onnx_session(imported)
    check = options.check
    if check.enabled:
        images, labels = check_faces(check, manifest.image_size)
    else:
        rng = np.random.default_rng(0)
        images, labels = rng.integers(0, 256, (PARITY_BATCH, *manifest.image_size, 3), dtype=np.uint8), None
    x = options.normalisation.apply(images[:PARITY_BATCH])
    _check_batch_parity(onnx_session(original), session, manifest, x)
    if labels is None:
        return replace(manifest, check={"passed": None, "skipped": "disabled with --no-check"})

    def embed(batch: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                session.run([manifest.embedding_name], {manifest.input_name: batch[i : i + 64]})[0]
                for i in range(0, len(batch), 64)
            ]
        )

    result = check_normalisation(embed, images, labels, options.normalisation, check.min_auc, check.max_deficit)
    if result.failure is not None:
        raise NormalisationCheckError(result.failure)
    return replace(manifest, check=result.to_dict())


def _check_batch_parity(original, imported, manifest: RecogniserManifest, x: np.ndarray) -> None:
    """Batch ``len(x)`` of the imported graph equals batch-1 runs of the original file (embedding and tap)."""
    name_in, name_emb, name_tap = manifest.input_name, manifest.embedding_name, manifest.tap_name
    try:
        batched_emb, batched_tap = imported.run([name_emb, name_tap], {name_in: x})
    except Exception as exc:  # onnxruntime raises its own exception types for shape errors
        raise graph.UnsupportedGraphError(
            f"the graph fails at batch {len(x)} after making its batch axis dynamic ({exc}); some operator "
            "hard-codes the exported batch size"
        ) from None
    single_emb = np.concatenate([original.run([name_emb], {name_in: x[i : i + 1]})[0] for i in range(len(x))])
    single_tap = np.concatenate([imported.run([name_tap], {name_in: x[i : i + 1]})[0] for i in range(len(x))])
    for what, got, want in (("embedding", batched_emb, single_emb), ("tap", batched_tap, single_tap)):
        scale = max(float(np.abs(want).max()), 1e-6)
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else np.inf
        if diff > BATCH_PARITY_RTOL * scale:
            raise graph.UnsupportedGraphError(
                f"batch {len(x)} {what} differs from batch-1 runs of the original model (max |diff| {diff:.3g}, "
                f"shapes {got.shape} vs {want.shape}); some operator hard-codes the exported batch size"
            )
