"""Torch-vs-onnxruntime parity of an exported model, measured on real face images preprocessed as in training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from eqface import contract
from eqface.export.onnx import OUTPUT_NAMES, run_onnx

# Float32 torch vs onnxruntime on the same inputs: both outputs, any batch size.
PARITY_TOLERANCE = 1e-4
PARITY_BATCH_SIZES = (1, 7, 64)


def pack_inputs(pack: str | Path, image_size: tuple[int, int], count: int) -> np.ndarray:
    """The first ``count`` images of a ``.npz`` face pack, fitted and normalised as in training: [N, 3, H, W]."""
    from eqface.data.packs import load_pack

    source = load_pack(pack)
    if len(source) < count:
        raise ValueError(f"{pack} holds {len(source)} images, {count} needed")
    return contract.preprocess([source.image(i) for i in range(count)], image_size)


def max_abs_diff(net: torch.nn.Module, session, x: np.ndarray) -> dict[str, float]:
    """Largest absolute torch-vs-onnxruntime difference per output on the same input batch."""
    with torch.no_grad():
        expected = [t.numpy() for t in net.eval()(torch.from_numpy(x))]
    got = run_onnx(session, x)
    return {name: float(np.abs(e - g).max()) for name, e, g in zip(OUTPUT_NAMES, expected, got, strict=True)}


def parity_by_batch_size(
    net: torch.nn.Module, session, x: np.ndarray, batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES
) -> dict[int, float]:
    """Largest difference over both outputs, per batch size, each batch taken from the first items of ``x``."""
    if len(x) < max(batch_sizes):
        raise ValueError(f"parity needs {max(batch_sizes)} inputs, got {len(x)}")
    return {b: max(max_abs_diff(net, session, x[:b]).values()) for b in batch_sizes}
