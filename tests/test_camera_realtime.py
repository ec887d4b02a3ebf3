"""The camera's realtime pipeline without a server: key frames with the faces followed in between
(``eqface.camera.keyframes``) on the real MTCNN and real faces crossing a scene, the box arithmetic it predicts with,
and the uplink gathering frames into messages. End to end through the real stack: tests/test_camera_stream.py."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from eqface.camera.clip import ClipSpec, render_frames
from eqface.camera.detectors import create_detector
from eqface.camera.keyframes import KeyframeConfig, KeyframeDetector, centre_shift, iou, predict_box
from eqface.camera.session import StreamOptions
from eqface.camera.uplink import OutgoingFrame, Uplink
from eqface.data.decode import decode_image
from tests.support.video import CELEBA_PACK, held_out_people
from tests.test_camera import mtcnn_weights  # noqa: F401 (a fixture: the default detector's weights, installed)

EVERY = 4
# two people cross the scene one after the other, clean frames, an empty scene between them
SPEC = ClipSpec(frames_per_person=14, gap_frames=5, photo_every=5, families=(), seed=1)


def test_predicted_box_moves_on_at_the_same_speed():
    box, previous = np.array([10.0, 20.0, 60.0, 80.0]), np.array([6.0, 21.0, 54.0, 79.0])
    np.testing.assert_allclose(predict_box(box, previous), [14.0, 19.0, 66.0, 81.0])
    np.testing.assert_allclose(predict_box(box, None), box)


def test_centre_shift_is_in_units_of_the_box():
    assert centre_shift(np.array([10.0, 10.0, 50.0, 50.0]), np.array([14.0, 13.0, 54.0, 53.0])) == pytest.approx(5 / 40)


def test_iou():
    assert iou(np.array([0, 0, 10, 10.0]), np.array([5, 0, 15, 10.0])) == pytest.approx(50 / 150)
    assert iou(np.array([0, 0, 10, 10.0]), np.array([20, 20, 30, 30.0])) == 0.0
    assert iou(np.array([0, 0, 10, 10.0]), np.array([0, 0, 10, 10.0])) == 1.0


def test_configs_refuse_nonsense():
    with pytest.raises(ValueError, match="detect_every"):
        KeyframeConfig(detect_every=0)
    with pytest.raises(ValueError, match="follow_min_iou"):
        KeyframeConfig(follow_min_iou=0.0)
    with pytest.raises(ValueError, match="merge_iou"):
        KeyframeConfig(merge_iou=1.5)
    with pytest.raises(ValueError, match="recentre"):
        KeyframeConfig(recentre=-0.1)
    with pytest.raises(ValueError, match="unknown pipeline 'fast'; valid: realtime, full"):
        StreamOptions(server="127.0.0.1:1", out_dir=None, subject_prefix="", pipeline="fast")


def test_a_detector_without_refinement_is_refused_by_name(shared_data):
    retinaface = create_detector(
        "retinaface", weights=shared_data / "weights" / "retinaface_mnet025_photo_analyze.onnx"
    )
    with pytest.raises(ValueError, match="RetinaFace cannot follow faces.*--pipeline full"):
        KeyframeDetector(retinaface)


@pytest.fixture(scope="module")
def scene(shared_data):
    """The frames of two real held-out people crossing the scene, and who is on screen in each (None: nobody)."""
    people = held_out_people(shared_data / CELEBA_PACK, 2, photos=3, enroll=0)
    frames = render_frames([(name, [decode_image(p) for p in photos]) for name, photos, _ in people], SPEC)
    return list(frames)


def _run(detector, scene) -> tuple[list, list[bool], KeyframeDetector]:
    follower = KeyframeDetector(detector, KeyframeConfig(detect_every=EVERY))
    found, key = [], []
    for frame, _ in scene:
        before = follower.stats.key_frames
        found.append(follower.detect(frame))
        key.append(follower.stats.key_frames > before)
    return found, key, follower


def test_faces_are_followed_between_key_frames_and_redetected_when_lost(mtcnn_weights, scene):  # noqa: F811
    detector = create_detector("mtcnn", weights=mtcnn_weights, min_size=24.0)
    found, key, follower = _run(detector, scene)
    full = [detector.detect(frame) for frame, _ in scene]
    owners = [owner for _, owner in scene]
    n, gap = SPEC.frames_per_person, SPEC.gap_frames

    # the whole detector ran on the first frame, then at most every EVERY frames while faces were followed
    assert key[0]
    keys = [i for i, k in enumerate(key) if k]
    assert all(b - a <= EVERY for a, b in zip(keys, keys[1:]))
    assert follower.stats.key_frames == len(keys) <= len(scene) / EVERY + 3
    # the second person is found at the first key frame after the whole detector first sees them
    first_seen = next(i for i in range(n + gap, len(scene)) if full[i])
    first_found = next(i for i in range(n + gap, len(scene)) if found[i])
    assert first_seen <= first_found < first_seen + EVERY
    # in between, each face is where the whole detector finds it: same count, landmarks within 3 % of its size
    for i, (ours, theirs) in enumerate(zip(found, full)):
        if key[i] or owners[i] is None or len(theirs) != 1 or first_seen <= i < first_found:
            continue
        assert len(ours) == 1, i
        gap_px = np.linalg.norm(ours[0].landmarks - theirs[0].landmarks, axis=1).mean()
        assert gap_px < 0.03 * theirs[0].size, (i, gap_px, theirs[0].size)
    # the first person leaves: the follower loses the face on the first empty frame and re-detects there at once
    assert follower.stats.redetections >= 1
    assert key[n] and found[n] == [] and full[n] == []
    assert all(found[i] == [] for i in range(n, n + gap))
    assert follower.stats.refined_faces == sum(len(f) for f, k in zip(found, key) if not k) >= len(scene) / 3
    # deterministic: a second run follows the same faces to the same pixels
    again, key_again, _ = _run(detector, scene)
    assert key_again == key
    assert all(
        len(a) == len(b) and all(np.array_equal(x.landmarks, y.landmarks) for x, y in zip(a, b))
        for a, b in zip(found, again)
    )


def test_two_followed_faces_that_became_one_make_a_key_frame(mtcnn_weights, scene):  # noqa: F811
    detector = create_detector("mtcnn", weights=mtcnn_weights, min_size=24.0)
    follower = KeyframeDetector(detector, KeyframeConfig(detect_every=EVERY))
    (face,) = follower.detect(scene[0][0])
    # as if a second person had stood just beside: both followed boxes lead ONet to the one face in the next frame
    follower._faces.append((replace(face, box=face.box + [8.0, 4.0, 8.0, 4.0]), None))
    found = follower.detect(scene[1][0])
    assert follower.stats.key_frames == 2 and follower.stats.redetections == 1
    assert len(found) == 1 and len(follower._faces) == 1


def test_a_lingering_uplink_gathers_frames_into_one_message():
    uplink = Uplink("127.0.0.1:1", batch=3, linger_s=0.3)  # never started: its request stream is read here
    requests = uplink._requests(uplink._generation)
    for k in range(2):
        uplink.submit(OutgoingFrame("s", k + 1, b"\xff", 0.5))
    start = time.monotonic()
    first = next(requests)  # two frames queued, fewer than a batch: they wait out the linger, then go together
    assert time.monotonic() - start >= 0.2
    assert [f.sequence for f in first.frames] == [1, 2]
    for k in range(2, 5):
        uplink.submit(OutgoingFrame("s", k + 1, b"\xff", 0.5))
    start = time.monotonic()
    second = next(requests)  # a full batch goes at once
    assert time.monotonic() - start < 0.2 and [f.sequence for f in second.frames] == [3, 4, 5]
    assert uplink.stats.messages == 2 and uplink.stats.sent == 5
    with pytest.raises(ValueError, match="linger_s"):
        Uplink("127.0.0.1:1", linger_s=-1.0)
