"""The prepare-data step: any data source → a Dataset artifact the training, evaluation and export steps read.

The artifact is a folder with ``dataset.json`` (the data config that reads it, plus counts and a fingerprint) and,
when the data is packed, ``faces.npz`` in the pack format of ``eqface.data.packs`` (encoded images stay encoded,
byte for byte; synthetic faces keep their ``degradation`` ground truth). Packing makes a run self-contained and
versioned with its artifacts; data too large to copy (``pack_max_images``) is referenced where it lies, which must
then be a path every training pod mounts (a PVC). Object-store locations (``s3://``/``gs://``) are always packed:
training reads local files only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from eqface import paths
from eqface.config import DataConfig, EQFaceConfig, merge
from eqface.data import build_source, split_identities
from eqface.data.decode import ImageDecodeError
from eqface.data.sources import EncodedSource, FaceSource, SubsetSource
from eqface.workflow import storage

MANIFEST = "dataset.json"
PACK = "faces.npz"
DEFAULT_PACK_MAX_IMAGES = 200_000
KEPT_EXTRAS = ("degradation",)  # per-sample arrays worth carrying (synthetic ground truth for the quality report)
Materialize = Literal["auto", "pack", "reference"]
MATERIALIZE_MODES: tuple[str, ...] = get_args(Materialize)


@dataclass(frozen=True)
class PreparedDataset:
    """What ``dataset.json`` holds."""

    data: dict[str, Any]  # the DataConfig that reads the prepared data; a relative path is relative to the artifact
    location: str  # where the data came from
    packed: bool
    images: int
    identities: int
    held_out_identities: int
    skipped_images: int
    fingerprint: str  # sha256 of the labels and sample names: the same samples in the same order

    def metadata(self) -> dict[str, Any]:
        """Flat values for the artifact's metadata (shown in the Kubeflow UI)."""
        return {
            "source": self.original_source,
            "location": self.location,
            "packed": self.packed,
            "images": self.images,
            "identities": self.identities,
            "held_out_identities": self.held_out_identities,
            "skipped_images": self.skipped_images,
            "fingerprint": self.fingerprint,
        }

    @property
    def original_source(self) -> str:
        return self.data.get("original_source", self.data["source"])


def prepare_dataset(
    cfg: EQFaceConfig,
    out_dir: str | Path,
    materialize: Materialize = "auto",
    pack_max_images: int = DEFAULT_PACK_MAX_IMAGES,
) -> PreparedDataset:
    """Reads ``cfg.data`` (downloading object-store data first), checks it and writes the Dataset artifact.

    Every image is decoded once when packing (unreadable ones fail with their name, or are dropped and counted with
    ``data.on_error=skip``); a referenced dataset is checked on a sample of 256 images.

    Raises:
        ValueError: an unknown ``materialize``, data that cannot be split for evaluation, or unreadable images.
        FileNotFoundError: nothing at the location.
    """
    if materialize not in MATERIALIZE_MODES:
        raise ValueError(f"materialize must be one of {', '.join(MATERIALIZE_MODES)}, got {materialize!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = cfg.data
    remote = storage.is_remote(data.path)
    if remote and materialize == "reference":
        raise ValueError(
            f"{data.path} is in an object store: training pods cannot read it in place; pack it "
            "(materialize=pack) or put the data on a volume the pods mount"
        )
    with tempfile.TemporaryDirectory(prefix="eqface-data-") as tmp:
        read_cfg = dataclasses.replace(data, path=str(_fetch(data, Path(tmp)))) if remote else data
        source = build_source(read_cfg, tuple(cfg.model.image_size), cfg.train.seed)
        pack = (
            remote
            or data.source == "synthetic"
            or materialize == "pack"
            or (materialize == "auto" and len(source) <= pack_max_images)
        )
        skipped = 0
        if pack:
            source, skipped = _readable(source, data.on_error == "skip")
            _write_pack(source, out_dir / PACK)
            prepared = {**_as_dict(data), "source": "npz", "path": PACK, "original_source": data.source}
        else:
            _readable(source.subset(_sample(len(source)), relabel=False), skip=False)
            prepared = {**_as_dict(data), "path": str(paths.resolve(data.path).resolve())}
    _, held_out = split_identities(source, data.eval_identities)
    result = PreparedDataset(
        data=prepared,
        location=data.path or "synthetic",
        packed=pack,
        images=len(source),
        identities=source.num_classes,
        held_out_identities=held_out.num_classes if held_out is not None else 0,
        skipped_images=skipped,
        fingerprint=fingerprint(source),
    )
    (out_dir / MANIFEST).write_text(json.dumps(dataclasses.asdict(result), indent=2))
    return result


def read_manifest(dataset_dir: str | Path) -> PreparedDataset:
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{dataset_dir} is not a prepared dataset (no {MANIFEST}); run the prepare-data step")
    return PreparedDataset(**json.loads(path.read_text()))


def data_config(dataset_dir: str | Path) -> DataConfig:
    """The DataConfig that reads a prepared dataset from where its artifact lies now."""
    manifest = read_manifest(dataset_dir)
    fields = {k: v for k, v in manifest.data.items() if k != "original_source"}
    if manifest.packed:
        fields["path"] = str(Path(dataset_dir) / fields["path"])
    return merge(DataConfig(), fields)


def with_dataset(cfg: EQFaceConfig, dataset_dir: str | Path) -> EQFaceConfig:
    """``cfg`` reading its faces from the prepared dataset (what every step after prepare-data trains on)."""
    return dataclasses.replace(cfg, data=data_config(dataset_dir))


def fingerprint(source: FaceSource) -> str:
    digest = hashlib.sha256(np.asarray(source.labels, dtype=np.int64).tobytes())
    for name in source.names:
        digest.update(str(name).encode() + b"\0")
    return digest.hexdigest()


def _as_dict(data: DataConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(data)))


def _fetch(data: DataConfig, tmp: Path) -> Path:
    """Downloads object-store data; a RecordIO file comes with its ``.idx`` beside it."""
    local = storage.fetch(data.path, tmp)
    if data.source == "rec":
        storage.fetch(data.path.removesuffix(".rec") + ".idx", tmp)
    return local


def _sample(n: int, count: int = 256) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, num=min(n, count)).astype(np.int64))


def _readable(source: FaceSource, skip: bool) -> tuple[FaceSource, int]:
    """Decodes every image; unreadable ones raise (naming the file) or, with ``skip``, are dropped and counted."""
    bad = []
    for i in range(len(source)):
        try:
            source.image(i)
        except ImageDecodeError:
            if not skip:
                raise
            bad.append(i)
    if not bad:
        return source, 0
    keep = np.setdiff1d(np.arange(len(source)), bad)
    return source.subset(keep, relabel=False), len(bad)


def _encoded_bytes(source: FaceSource, i: int) -> bytes | None:
    """The file bytes of sample ``i`` when the source holds encoded images, else None."""
    if isinstance(source, EncodedSource):
        return source.read(i)
    if isinstance(source, SubsetSource):
        return _encoded_bytes(source.parent, int(source.indices[i]))
    return None


def _write_pack(source: FaceSource, path: Path) -> None:
    """Writes ``source`` in the npz pack format that :func:`eqface.data.packs.load_pack` reads back unchanged."""
    n = len(source)
    arrays: dict[str, np.ndarray] = {
        "identity": np.asarray(source.labels, dtype=np.int64),
        "filename": np.asarray([str(name) for name in source.names]),
    }
    arrays.update({k: np.asarray(v) for k, v in source.extras.items() if k in KEPT_EXTRAS})
    encoded = [_encoded_bytes(source, i) for i in range(n)] if n and _encoded_bytes(source, 0) is not None else None
    if encoded is not None:
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=n)
        arrays["jpeg_offsets"] = np.concatenate([[0], np.cumsum(lengths)])
        arrays["jpeg_bytes"] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    else:
        arrays["images"] = np.stack([source.image(i) for i in range(n)])
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
