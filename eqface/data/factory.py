"""Builds the FaceSource a DataConfig describes."""

from __future__ import annotations

from eqface.config import DataConfig
from eqface.data.image_folder import load_image_folder
from eqface.data.packs import load_pack
from eqface.data.recordio import load_recordio
from eqface.data.sources import FaceSource, filter_identities
from eqface.data.synthetic import generate_synthetic


def build_source(cfg: DataConfig, image_size: tuple[int, int] = (112, 112), seed: int = 0) -> FaceSource:
    if cfg.source == "synthetic":
        source: FaceSource = generate_synthetic(cfg.synthetic, image_size=image_size, seed=seed)
    elif not cfg.path:
        raise ValueError(f"data.source={cfg.source} needs data.path")
    elif cfg.source == "npz":
        source = load_pack(cfg.path)
    elif cfg.source == "folder":
        source = load_image_folder(cfg.path)
    elif cfg.source == "rec":
        source = load_recordio(cfg.path)
    else:
        raise ValueError(f"unknown data source {cfg.source!r}; valid: synthetic, npz, folder, rec")
    return filter_identities(source, cfg.min_images_per_identity, cfg.max_identities)
