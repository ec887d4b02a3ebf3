"""Data readers (npz packs, image folders, RecordIO written here), augmentations, synthetic data, batching."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from eqface.config import AugmentConfig, DataConfig, SyntheticConfig
from eqface.data import build_source, split_identities
from eqface.data.augment import DEGRADATIONS, Augmenter, degrade, resolution_drop
from eqface.data.dataset import AugmentedFaces, EpochBatchSampler, collate
from eqface.data.decode import ImageDecodeError, decode_image
from eqface.data.image_folder import load_image_folder
from eqface.data.image_ops import encode_image
from eqface.data.packs import light_angle_degrees, load_pack
from eqface.data.recordio import RecordIOError, load_recordio, write_recordio
from eqface.data.synthetic import generate_synthetic


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return generate_synthetic(SyntheticConfig(identities=3, images_per_identity=4), image_size=(48, 40)).images


def test_recordio_round_trip_without_mxnet(tmp_path, faces) -> None:
    encoded = [encode_image(img, "PNG") for img in faces]
    labels = [i // 4 * 10 for i in range(len(faces))]  # sparse labels like a filtered MS1MV2
    write_recordio(tmp_path / "train.rec", zip(encoded, labels))
    source = load_recordio(tmp_path / "train.rec")
    assert len(source) == len(faces)
    assert source.labels.tolist() == [i // 4 for i in range(len(faces))]  # renumbered densely
    assert source.extras["rec_label"].tolist() == labels
    for i in range(len(faces)):
        np.testing.assert_array_equal(source.image(i), faces[i])


def test_recordio_corruption_names_the_record(tmp_path, faces) -> None:
    write_recordio(tmp_path / "train.rec", [(encode_image(faces[0], "PNG"), 0), (encode_image(faces[1], "PNG"), 1)])
    raw = bytearray((tmp_path / "train.rec").read_bytes())
    offset = int((tmp_path / "train.idx").read_text().splitlines()[2].split("\t")[1])
    raw[offset : offset + 4] = struct.pack("<I", 0xDEADBEEF)
    (tmp_path / "train.rec").write_bytes(bytes(raw))
    with pytest.raises(RecordIOError, match=r"train.rec#2: bad or truncated record"):
        load_recordio(tmp_path / "train.rec")
    with pytest.raises(FileNotFoundError):
        load_recordio(tmp_path / "missing.rec")


def _write_folder(root, faces, corrupt: bool = False) -> None:
    for i, img in enumerate(faces):
        folder = root / f"person_{i // 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(encode_image(img, "PNG"))
    if corrupt:
        (root / "person_1" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")


def test_image_folder_reads_identities_in_order(tmp_path, faces) -> None:
    _write_folder(tmp_path, faces)
    source = load_image_folder(tmp_path)
    assert source.num_classes == 3 and len(source) == 12
    assert source.extras["identity_name"][0] == "person_0"
    np.testing.assert_array_equal(source.image(5), faces[5])


def test_corrupt_image_is_a_clear_error_or_skipped_and_counted(tmp_path, faces) -> None:
    _write_folder(tmp_path, faces, corrupt=True)
    source = load_image_folder(tmp_path)
    broken = next(i for i, n in enumerate(source.names) if n.endswith("broken.jpg"))
    strict = AugmentedFaces(source, (48, 40), None, seed=0)
    with pytest.raises(ImageDecodeError, match="broken.jpg: cannot decode image"):
        strict[(0, broken)]
    lenient = AugmentedFaces(source, (48, 40), None, seed=0, skip_errors=True)
    batch = collate([lenient[(0, i)] for i in range(len(source))])
    assert batch.skipped == 1 and len(batch.labels) == len(source) - 1
    with pytest.raises(ImageDecodeError, match="empty image data"):
        decode_image(b"", "frame-7")


def test_similarity_alignment_recovers_a_known_transform() -> None:
    from eqface.data.image_ops import ARCFACE_TEMPLATE, estimate_similarity, warp_similarity
    from eqface.data.packs import YALE_EYES

    angle, scale, shift = 0.3, 1.7, np.array([3.0, -4.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    matrix = estimate_similarity(src, src @ rot.T + shift)
    np.testing.assert_allclose(matrix, np.hstack([rot, shift[:, None]]), atol=1e-9)
    # Yale's eye positions land on the template's eyes
    m = estimate_similarity(YALE_EYES, ARCFACE_TEMPLATE[:2])
    np.testing.assert_allclose(YALE_EYES @ m[:, :2].T + m[:, 2], ARCFACE_TEMPLATE[:2], atol=0.2)
    # a bright dot at the source eye ends up at the template eye after warping
    img = np.zeros((192, 168), np.uint8)
    img[44:47, 34:37] = 255
    warped = warp_similarity(img, m, (112, 112), fill=0)[:, :, 0]
    y, x = np.unravel_index(np.argmax(warped), warped.shape)
    assert abs(x - 38.3) <= 1.5 and abs(y - 51.7) <= 1.5
    with pytest.raises(ValueError, match="K >= 2"):
        estimate_similarity(src[:1], src[:1])


def test_resolution_drop_like_the_official_code(faces) -> None:
    img = faces[0]
    dropped = resolution_drop(img, 20)
    assert dropped.shape == img.shape and not np.array_equal(dropped, img)
    # information is lost: high frequencies are gone
    assert np.abs(np.diff(dropped.astype(float), axis=1)).mean() < np.abs(np.diff(img.astype(float), axis=1)).mean()


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_degradations_are_deterministic_and_change_the_image(kind, faces) -> None:
    a = degrade(faces[0], kind, 0.8, np.random.default_rng(1))
    b = degrade(faces[0], kind, 0.8, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == faces[0].shape and a.dtype == np.uint8 and not np.array_equal(a, faces[0])


def test_unknown_degradation_lists_valid_ones(faces) -> None:
    with pytest.raises(ValueError, match="unknown degradation 'fog'.*blur"):
        degrade(faces[0], "fog", 0.5, np.random.default_rng(0))


def test_augmentation_depends_only_on_seed_epoch_index(faces) -> None:
    source = generate_synthetic(SyntheticConfig(identities=3, images_per_identity=4), image_size=(48, 40))
    aug = Augmenter(AugmentConfig(blur_p=0.5, noise_p=0.5, occlusion_p=0.5, lighting_p=0.5))
    ds = AugmentedFaces(source, (48, 40), aug, seed=3)
    np.testing.assert_array_equal(ds[(2, 5)][0], ds[(2, 5)][0])
    assert not np.array_equal(ds[(2, 5)][0], ds[(3, 5)][0])


def test_synthetic_is_deterministic_and_labels_degradations() -> None:
    cfg = SyntheticConfig(identities=4, images_per_identity=5, degraded_fraction=0.5)
    a, b = generate_synthetic(cfg, seed=1), generate_synthetic(cfg, seed=1)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, generate_synthetic(cfg, seed=2).images)
    degraded = a.extras["degradation"] > 0
    assert 0 < degraded.sum() < len(a) and (a.extras["degradation_kind"][degraded] >= 0).all()


def test_sampler_shards_disjointly_and_resumes_mid_epoch() -> None:
    ranks = [EpochBatchSampler(20, 3, seed=0, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_position(epoch=1)
    seen = [[i for batch in s for _, i in batch] for s in ranks]
    assert len(seen[0]) == len(seen[1]) == 9 and not set(seen[0]) & set(seen[1])
    full = list(ranks[0])
    ranks[0].set_position(epoch=1, start_batch=2)
    assert list(ranks[0]) == full[2:]
    with pytest.raises(ValueError, match="cannot fill one batch"):
        EpochBatchSampler(5, 3, seed=0, world_size=2)


def test_identity_split_holds_out_whole_identities() -> None:
    source = build_source(DataConfig(synthetic=SyntheticConfig(identities=6, images_per_identity=3)), (32, 32))
    train, held = split_identities(source, 2)
    assert train.num_classes == 4 and held.num_classes == 2
    assert set(train.names).isdisjoint(held.names)


def test_unknown_source_lists_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown data source 'parquet'; valid names: folder, npz, rec, synthetic"):
        build_source(DataConfig(source="parquet"), (32, 32))


def test_config_names_exactly_the_registered_sources() -> None:
    import typing

    from eqface.data.factory import SOURCES

    literal = typing.get_type_hints(DataConfig)["source"]
    assert sorted(typing.get_args(literal)) == SOURCES.names()


@pytest.mark.parametrize("source", ["npz", "folder", "rec"])
def test_file_sources_need_a_path(source: str) -> None:
    with pytest.raises(ValueError, match=f"data.source={source} needs data.path"):
        build_source(DataConfig(source=source), (32, 32))


def test_sources_read_their_files_by_name(tmp_path, faces) -> None:
    for i, img in enumerate(faces):
        folder = tmp_path / "folder" / f"id{i // 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(encode_image(img, "PNG"))
    write_recordio(tmp_path / "t.rec", ((encode_image(img, "PNG"), i // 4) for i, img in enumerate(faces)))
    np.savez(tmp_path / "p.npz", images=faces, identity=np.arange(len(faces)) // 4)
    for source, path in (("folder", "folder"), ("rec", "t.rec"), ("npz", "p.npz")):
        built = build_source(DataConfig(source=source, path=str(tmp_path / path)), (48, 40))
        assert len(built) == len(faces) and built.num_classes == 3, source
        np.testing.assert_array_equal(built.image(5), faces[5])


def test_shared_packs_load(shared_data) -> None:
    yale = load_pack(shared_data / "extended_yale_b_cropped.npz")
    assert len(yale) == 2414 and yale.num_classes == 38  # flash-failed and ambient images dropped
    assert yale.image(0).shape == (112, 112, 3)  # mapped onto the ArcFace template
    angles = light_angle_degrees(yale)
    assert angles.min() == 0 and angles.max() > 80
    celeba = load_pack(shared_data / "celeba_wild_subset_rgb112.npz")
    assert len(celeba) == 6300 and celeba.num_classes == 299 and celeba.image(0).shape == (112, 112, 3)
    orl = load_pack(shared_data / "orl_att_faces.npz")
    assert orl.image(0).shape == (112, 92, 3)
