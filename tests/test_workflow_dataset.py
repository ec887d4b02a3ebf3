"""The prepare-data step: every source kind becomes a Dataset artifact that training reads back unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eqface.data import build_source, split_identities
from eqface.data.decode import ImageDecodeError
from eqface.data.image_ops import encode_image
from eqface.workflow.configure import build_config, preset_form
from eqface.workflow.dataset import MANIFEST, PACK, data_config, prepare_dataset, read_manifest, with_dataset


def config(**form):
    return build_config("test", {**preset_form("test"), **form}, [])


@pytest.fixture()
def folder(tmp_path):
    """root/<identity>/<image>.jpg: 5 identities × 3 faces, plus one corrupt file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    for identity in range(5):
        (root / f"person{identity}").mkdir(parents=True)
        for k in range(3):
            img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            (root / f"person{identity}" / f"{k}.jpg").write_bytes(encode_image(img))
    return root


def test_synthetic_faces_are_packed_with_their_degradation_ground_truth(tmp_path):
    cfg = config()
    prepared = prepare_dataset(cfg, tmp_path)
    assert prepared.packed and (tmp_path / PACK).is_file()
    assert (prepared.images, prepared.identities, prepared.held_out_identities) == (64, 8, 3)
    original = build_source(cfg.data, (32, 32), cfg.train.seed)
    packed = build_source(data_config(tmp_path))
    assert len(packed) == len(original)
    np.testing.assert_array_equal(packed.labels, original.labels)
    np.testing.assert_array_equal(packed.image(7), original.image(7))
    np.testing.assert_array_equal(packed.extras["degradation"], original.extras["degradation"])
    _, held_out = split_identities(packed, cfg.data.eval_identities)
    assert held_out.num_classes == 3


def test_an_image_folder_is_packed_byte_for_byte(folder, tmp_path):
    cfg = config(data_source="folder", data_location=str(folder), eval_identities=2)
    prepared = prepare_dataset(cfg, tmp_path / "artifact")
    assert prepared.packed and prepared.images == 15 and prepared.identities == 5
    with np.load(tmp_path / "artifact" / PACK) as npz:
        first = npz["jpeg_bytes"][npz["jpeg_offsets"][0] : npz["jpeg_offsets"][1]].tobytes()
    assert first == (folder / "person0" / "0.jpg").read_bytes()
    assert json.loads((tmp_path / "artifact" / MANIFEST).read_text())["data"]["original_source"] == "folder"


def test_unreadable_images_fail_with_their_name_or_are_skipped_and_counted(folder, tmp_path):
    (folder / "person1" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        prepare_dataset(config(data_source="folder", data_location=str(folder), eval_identities=2), tmp_path / "a")
    cfg = build_config(
        "test",
        {**preset_form("test"), "data_source": "folder", "data_location": str(folder), "eval_identities": 2},
        ["data.on_error=skip"],
    )
    prepared = prepare_dataset(cfg, tmp_path / "b")
    assert prepared.images == 15 and prepared.skipped_images == 1


def test_large_data_is_referenced_where_it_lies(folder, tmp_path):
    cfg = config(data_source="folder", data_location=str(folder), eval_identities=2)
    prepared = prepare_dataset(cfg, tmp_path / "artifact", materialize="auto", pack_max_images=10)
    assert not prepared.packed and not (tmp_path / "artifact" / PACK).exists()
    assert data_config(tmp_path / "artifact").path == str(folder.resolve())
    assert with_dataset(cfg, tmp_path / "artifact").data.source == "folder"
    assert read_manifest(tmp_path / "artifact").fingerprint == prepared.fingerprint


def test_a_shared_location_is_referenced_by_its_real_path(folder, tmp_path, monkeypatch):
    from eqface import paths

    monkeypatch.setenv(paths.ENV_VAR, str(folder.parent))
    cfg = config(data_source="folder", data_location=f"shared:{folder.name}", eval_identities=2)
    prepare_dataset(cfg, tmp_path / "artifact", materialize="reference")
    assert data_config(tmp_path / "artifact").path == str(folder.resolve())  # readable by steps in any directory


def test_the_packed_artifact_is_read_from_wherever_it_is_moved(tmp_path):
    prepare_dataset(config(), tmp_path / "first")
    (tmp_path / "first").rename(tmp_path / "moved")
    assert data_config(tmp_path / "moved").path == str(tmp_path / "moved" / PACK)


def test_a_missing_location_or_manifest_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError):
        prepare_dataset(config(data_source="npz", data_location=str(tmp_path / "none.npz")), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="prepare-data"):
        read_manifest(tmp_path)
    with pytest.raises(ValueError, match="materialize"):
        prepare_dataset(config(), tmp_path / "b", materialize="copy")


def test_a_rec_file_is_packed(tmp_path):
    from eqface.data.recordio import write_recordio

    rng = np.random.default_rng(1)
    images = [encode_image(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)) for _ in range(12)]
    rec = tmp_path / "train.rec"
    write_recordio(rec, zip(images, np.repeat(np.arange(4), 3).tolist()))
    prepared = prepare_dataset(config(data_source="rec", data_location=str(rec), eval_identities=2), tmp_path / "a")
    assert prepared.packed and prepared.images == 12 and prepared.identities == 4
