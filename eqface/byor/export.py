"""Writes the grafted contract model of an imported recogniser + trained head, and proves it on real faces.

Parity: the served embedding equals the original file's (fed its own normalisation from the same uint8 pixels,
cosine ≥ ``MIN_COSINE``) and the served quality equals the torch head on the recogniser's tap (≤ ``QUALITY_ATOL``),
at several batch sizes. The file is renamed into place only after it passed this and the contract check.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from eqface import contract
from eqface.byor.recogniser import MODEL_FILE, Recogniser

MIN_COSINE = 0.99999
QUALITY_ATOL = 1e-5
PARITY_BATCH_SIZES = (1, 7, 64)


class GraftParityError(RuntimeError):
    """The grafted model does not reproduce the original recogniser or the torch head; the message has the numbers."""


@dataclass(frozen=True)
class GraftParity:
    faces: int
    reference: str  # the file whose embeddings the grafted model must reproduce
    min_cosine: float
    max_quality_diff: float
    batch_sizes: tuple[int, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def export_grafted(import_dir: str | Path, out: str | Path, images_rgb: np.ndarray) -> GraftParity:
    """Grafts ``<import_dir>/step2/quality_head.pt`` onto the imported graph, writes ``out``, checks parity.

    Args:
        images_rgb: real faces, uint8 [N, H, W, 3] at the recogniser's size; N ≥ the largest parity batch.
    """
    import onnx

    from eqface.byor.graft import graft
    from eqface.byor.quality_training import load_head
    from eqface.byor.step2 import HEAD_FILE, STEP2_DIR
    from eqface.export.onnx import verify_onnx

    import_dir, out = Path(import_dir), Path(out)
    recogniser = Recogniser(import_dir)
    head = load_head(import_dir / STEP2_DIR / HEAD_FILE)
    model = graft(onnx.load(str(import_dir / MODEL_FILE)), recogniser.manifest, head)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".onnx")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        verify_onnx(tmp)  # the contract: names, dtypes, dynamic batch, unit embeddings, quality in [0, 1]
        parity = measure_parity(Path(tmp), recogniser, head, images_rgb)
        if parity.min_cosine < MIN_COSINE or parity.max_quality_diff > QUALITY_ATOL:
            raise GraftParityError(
                f"grafted model: min cosine to {parity.reference} {parity.min_cosine:.7f} (need ≥ {MIN_COSINE}), "
                f"max |quality − torch head| {parity.max_quality_diff:.2e} (need ≤ {QUALITY_ATOL:.0e})"
            )
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return parity


def measure_parity(grafted: Path, recogniser: Recogniser, head, images_rgb: np.ndarray) -> GraftParity:
    """Grafted model vs the original file (batch-1 runs) and the torch head, at ``PARITY_BATCH_SIZES``."""
    from eqface.export.onnx import onnx_session, run_onnx

    m = recogniser.manifest
    if len(images_rgb) < max(PARITY_BATCH_SIZES):
        raise ValueError(f"parity needs {max(PARITY_BATCH_SIZES)} faces, got {len(images_rgb)}")
    reference = Path(m.source) if Path(m.source).is_file() else recogniser.model_path
    original = onnx_session(reference)
    own = m.normalisation.apply(images_rgb)
    want = np.concatenate(
        [original.run([m.embedding_name], {m.input_name: own[i : i + 1]})[0] for i in range(len(own))]
    )
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    _, tap = recogniser.run(own)
    with torch.no_grad():
        want_q = head.eval()(torch.from_numpy(tap)).numpy()
    session, x = onnx_session(grafted), contract.normalize_pixels(images_rgb)
    cosines, diffs = [], []
    for batch in PARITY_BATCH_SIZES:
        for start in range(0, len(x) - batch + 1, batch):
            emb, q = run_onnx(session, x[start : start + batch])
            cosines.append(np.einsum("ij,ij->i", emb, want[start : start + batch]).min())
            diffs.append(np.abs(q - want_q[start : start + batch]).max())
    return GraftParity(len(x), str(reference), float(min(cosines)), float(max(diffs)), PARITY_BATCH_SIZES)


def pack_faces(pack: str | Path, size: tuple[int, int], count: int = max(PARITY_BATCH_SIZES)) -> np.ndarray:
    """The first ``count`` faces of a pack (``shared:`` paths allowed), fitted to ``size``: uint8 [N, H, W, 3]."""
    from eqface import paths
    from eqface.contract import fit_to_size
    from eqface.data.packs import load_pack

    source = load_pack(paths.resolve(pack))
    return np.stack([fit_to_size(source.image(i), size) for i in range(min(count, len(source)))])
