"""insightface RecordIO (``train.rec`` + ``train.idx``, the MS1MV2 format), read without mxnet.

Record framing (dmlc-core): uint32 magic 0xCED7230A, uint32 ``lrec`` (upper 3 bits: continuation flag, lower 29:
length), payload, zero padding to 4 bytes. Payload: an IRHeader ``<IfQQ`` (flag, label, id, id2); when flag > 0 the
label is instead ``flag`` float32 values that follow the header; then the encoded image. The ``.idx`` file has one
``<key>\\t<byte offset>`` line per record. In insightface packs record 0 is a header whose label holds the
range [1, N) of image records. ``write_recordio`` writes such files (tests, benches, packing one's own faces).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from eqface.data.sources import EncodedSource

MAGIC = 0xCED7230A
HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2 before each image (mxnet IRHeader)
_LENGTH_MASK = (1 << 29) - 1


class RecordIOError(ValueError):
    """A malformed .rec/.idx pair; the message names the file and the record."""


def read_idx(path: Path) -> dict[int, int]:
    index: dict[int, int] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            key, offset = line.split("\t")
            index[int(key)] = int(offset)
        except ValueError:
            raise RecordIOError(f"{path}:{line_no}: expected '<key>\\t<offset>', got {line!r}") from None
    return index


def read_record(f, offset: int, where: str) -> bytes:
    """Reads the payload of the record at ``offset`` (joining continuation parts)."""
    f.seek(offset)
    parts: list[bytes] = []
    while True:
        head = f.read(8)
        if len(head) != 8:
            raise RecordIOError(f"{where}: truncated record header at byte {offset}")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecordIOError(f"{where}: bad magic 0x{magic:08X} at byte {offset}")
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        payload = f.read(length)
        if len(payload) != length:
            raise RecordIOError(f"{where}: truncated record at byte {offset}")
        f.read((4 - length % 4) % 4)
        parts.append(payload)
        if cflag in (0, 3):  # whole record, or last part
            return b"".join(parts)


def unpack_payload(payload: bytes, where: str) -> tuple[np.ndarray, bytes]:
    """Splits an IRHeader payload into (label values, image bytes)."""
    if len(payload) < HEADER.size:
        raise RecordIOError(f"{where}: payload shorter than its header")
    flag, label, _, _ = HEADER.unpack_from(payload)
    body = payload[HEADER.size :]
    if flag > 0:
        if len(body) < 4 * flag:
            raise RecordIOError(f"{where}: header announces {flag} labels but the record is too short")
        return np.frombuffer(body[: 4 * flag], dtype=np.float32).copy(), body[4 * flag :]
    return np.asarray([label], dtype=np.float32), body


def load_recordio(rec_path: str | Path) -> EncodedSource:
    """Opens ``<name>.rec`` with its ``<name>.idx``; images are decoded on access."""
    rec_path = Path(rec_path)
    idx_path = rec_path.with_suffix(".idx")
    for p in (rec_path, idx_path):
        if not p.is_file():
            raise FileNotFoundError(f"RecordIO file not found: {p}")
    index = read_idx(idx_path)
    with rec_path.open("rb") as f:
        keys = _image_keys(f, index, rec_path)
        labels = [_read_label(f, index[k], f"{rec_path}#{k}") for k in keys]
    offsets = [index[k] for k in keys]
    names = [f"{rec_path}#{k}" for k in keys]

    def read(i: int) -> bytes:
        with rec_path.open("rb") as fh:
            return unpack_payload(read_record(fh, offsets[i], names[i]), names[i])[1]

    labels_arr = np.asarray(labels, dtype=np.int64)
    _, dense = np.unique(labels_arr, return_inverse=True)
    return EncodedSource(read=read, labels=dense, names=names, extras={"rec_label": labels_arr})


def _read_label(f, offset: int, where: str) -> int:
    """The first label value of a record, reading only its header (an MS1MV2 .rec is tens of GB)."""
    f.seek(offset)
    head = f.read(8 + HEADER.size)
    if len(head) != 8 + HEADER.size or struct.unpack_from("<I", head)[0] != MAGIC:
        raise RecordIOError(f"{where}: bad or truncated record at byte {offset}")
    flag, label, _, _ = HEADER.unpack_from(head, 8)
    if flag > 0:
        return int(np.frombuffer(f.read(4), dtype=np.float32)[0])
    return int(label)


def _image_keys(f, index: dict[int, int], rec_path: Path) -> list[int]:
    if 0 not in index:
        return sorted(index)
    label, _ = unpack_payload(read_record(f, index[0], f"{rec_path}#0"), f"{rec_path}#0")
    if len(label) >= 2 and label[0] > 0:  # insightface header record: images are keys [1, label[0])
        return [k for k in range(1, int(label[0])) if k in index]
    return sorted(index)


def write_recordio(rec_path: str | Path, items: Iterable[tuple[bytes, int]]) -> int:
    """Writes (encoded image, label) pairs as an insightface-style ``.rec``/``.idx`` pair with header record 0.

    Returns the number of images written.
    """
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
