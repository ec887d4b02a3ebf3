"""Writes insightface-style RecordIO files (the layout eqface.data.recordio reads) for the reader's tests."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from eqface.data.recordio import HEADER, MAGIC


def write_recordio(rec_path: str | Path, items: Iterable[tuple[bytes, int]]) -> int:
    """Writes (encoded image, label) pairs as an insightface-style .rec/.idx pair (with header record 0)."""
    rec_path = Path(rec_path)
    items = list(items)
    records = [(0, _pack(np.asarray([len(items) + 1, len(items) + 1], dtype=np.float32), b""))]
    records += [(i + 1, _pack(np.asarray(label, dtype=np.float32), img)) for i, (img, label) in enumerate(items)]
    lines = []
    with rec_path.open("wb") as f:
        for key, payload in records:
            lines.append(f"{key}\t{f.tell()}")
            f.write(struct.pack("<II", MAGIC, len(payload)))
            f.write(payload + b"\0" * ((4 - len(payload) % 4) % 4))
    rec_path.with_suffix(".idx").write_text("\n".join(lines) + "\n")
    return len(items)


def _pack(label: np.ndarray, img: bytes) -> bytes:
    label = np.atleast_1d(label).astype(np.float32)
    if label.size == 1:
        return HEADER.pack(0, float(label[0]), 0, 0) + img
    return HEADER.pack(label.size, 0.0, 0, 0) + label.tobytes() + img
