"""Builds the FaceSource a DataConfig describes: readers registered by name (``data.source``), imported lazily."""

from __future__ import annotations

from pathlib import Path

from eqface import paths
from eqface.config import DataConfig
from eqface.data.sources import FaceSource, filter_identities
from eqface.registry import Registry

SOURCES: Registry[FaceSource] = Registry("data source")


def _data_path(cfg: DataConfig) -> Path:
    """``data.path`` as a file path (``shared:`` names a file in the shared data folder)."""
    if not cfg.path:
        raise ValueError(f"data.source={cfg.source} needs data.path")
    return paths.resolve(cfg.path)


@SOURCES.register("synthetic")
def _synthetic(cfg: DataConfig, image_size: tuple[int, int], seed: int) -> FaceSource:
    from eqface.data.synthetic import generate_synthetic

    return generate_synthetic(cfg.synthetic, image_size=image_size, seed=seed)


@SOURCES.register("npz")
def _npz(cfg: DataConfig, image_size: tuple[int, int], seed: int) -> FaceSource:
    from eqface.data.packs import load_pack

    return load_pack(_data_path(cfg))


@SOURCES.register("folder")
def _folder(cfg: DataConfig, image_size: tuple[int, int], seed: int) -> FaceSource:
    from eqface.data.image_folder import load_image_folder

    return load_image_folder(_data_path(cfg))


@SOURCES.register("rec")
def _rec(cfg: DataConfig, image_size: tuple[int, int], seed: int) -> FaceSource:
    from eqface.data.recordio import load_recordio

    return load_recordio(_data_path(cfg))


def build_source(cfg: DataConfig, image_size: tuple[int, int] = (112, 112), seed: int = 0) -> FaceSource:
    """The faces ``cfg`` names, filtered by its identity limits.

    Raises:
        ValueError: an unknown ``cfg.source`` (the message lists the valid names), or a file source without a path.
    """
    source = SOURCES.create(cfg.source, cfg=cfg, image_size=image_size, seed=seed)
    return filter_identities(source, cfg.min_images_per_identity, cfg.max_identities)
