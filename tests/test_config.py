"""Typed config: presets, overrides with type coercion, round trip through JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eqface.config import PRESETS, EQFaceConfig, apply_overrides, config_from_dict, preset, to_json


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_resolve_and_round_trip(name: str) -> None:
    cfg = preset(name)
    assert config_from_dict(json.loads(to_json(cfg))) == cfg


def test_paper_preset_is_the_paper_schedule() -> None:
    cfg = preset("paper")
    assert cfg == EQFaceConfig()
    assert (cfg.margin.m1, cfg.margin.m2, cfg.margin.m3, cfg.margin.scale) == (1.0, 0.3, 0.2, 64.0)
    assert (cfg.train.step1.lr, cfg.train.step1.epochs, cfg.train.step1.milestones) == (0.1, 100, (30, 60, 90))
    assert (cfg.train.step2.lr, cfg.train.step2.epochs, cfg.train.step2.milestones) == (0.01, 15, (5, 10))
    assert cfg.train.step3 == cfg.train.step1
    assert (cfg.train.step1.momentum, cfg.train.step1.weight_decay) == (0.9, 5e-4)
    assert cfg.model.backbone == "iresnet100" and cfg.model.embedding_size == 512


def test_overrides_coerce_types() -> None:
    cfg = apply_overrides(
        preset("demo"),
        [
            "train.step1.lr=0.05",
            "train.step1.milestones=[3, 5]",
            "model.image_size=[112,96]",
            "train.step3_from_scratch=true",
            "data.on_error=skip",
            "train.qwdf_threshold=0.2",
            "model.backbone=iresnet50",
            "train.classifier.kind=partial_fc",
            "train.classifier.sample_rate=0.1",
        ],
    )
    assert cfg.train.classifier.kind == "partial_fc" and cfg.train.classifier.sample_rate == 0.1
    assert cfg.train.step1.lr == 0.05 and cfg.train.step1.milestones == (3, 5)
    assert cfg.model.image_size == (112, 96) and cfg.train.step3_from_scratch is True
    assert cfg.data.on_error == "skip" and cfg.train.qwdf_threshold == 0.2 and cfg.model.backbone == "iresnet50"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.nope=1", "TrainConfig has no field 'nope'"),
        ("train.batch_size=abc", "batch_size must be a int"),
        ("train.batch_size=1.5", "batch_size must be an integer"),
        ("data.on_error=ignore", "on_error must be one of"),
        ("train.step3_from_scratch=maybe", "must be true or false"),
        ("model.image_size=[1,2,3]", "needs 2 values"),
        ("train=3", "train is a section"),
        ("novalue", "must look like section.field=value"),
        ("train.classifier.kind=sharded", "kind must be one of"),
        ("train.classifier.sample_rate=0", r"sample_rate must be in \(0, 1\]"),
        ("train.classifier.sample_rate=1.5", r"sample_rate must be in \(0, 1\]"),
        ("train.classifier.sample_rate=0.2", "needs classifier.kind=partial_fc"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_overrides(preset("demo"), [override])


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge'.*demo.*paper"):
        preset("huge")


def test_preset_files_resolve_from_any_working_directory(tmp_path, monkeypatch) -> None:
    """Presets name shared files as shared:<file>, found through eqface.paths wherever the command runs."""
    from eqface import paths
    from eqface.data import build_source

    shared = tmp_path / "elsewhere" / "shared-data"
    (shared / "weights").mkdir(parents=True)
    (shared / "weights" / "mobilefacenet_casia_xiaoccer_068.npz").write_bytes(b"weights")
    identities = np.repeat(np.arange(3), 2)
    np.savez(
        shared / "celeba_wild_subset_rgb112.npz",
        images=np.zeros((6, 8, 8, 3), np.uint8),
        identity=identities,
        filename=np.array([f"{i}.jpg" for i in range(6)]),
    )
    monkeypatch.setenv(paths.ENV_VAR, str(shared))
    monkeypatch.chdir(tmp_path)  # no ../shared/data from here
    cfg = preset("mobilefacenet-celeba")
    assert cfg.data.path.startswith(paths.PREFIX) and cfg.model.pretrained.startswith(paths.PREFIX)
    assert paths.resolve(cfg.model.pretrained).read_bytes() == b"weights"
    source = build_source(cfg.data, (8, 8))
    assert len(source) == 6 and source.num_classes == 3


def test_preset_data_loads_from_another_directory(shared_data, tmp_path, monkeypatch) -> None:
    from eqface import paths

    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = preset("mobilefacenet-celeba")
    assert paths.resolve(cfg.data.path) == shared_data / "celeba_wild_subset_rgb112.npz"
    assert paths.resolve(cfg.model.pretrained).is_file()


def test_stored_configs_with_retired_fields_still_read() -> None:
    stored = json.loads(to_json(preset("test")))
    stored["train"]["log_every"] = 0  # written by runs before the field was removed
    assert config_from_dict(stored) == preset("test")
    stored["train"]["other"] = 1
    with pytest.raises(ValueError, match="no field 'other'"):
        config_from_dict(stored)
