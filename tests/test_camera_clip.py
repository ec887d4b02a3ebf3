"""The demo's camera clip (``eqface.camera.clip``): real held-out faces crossing a scene, held-out degradations,
written as a real video the camera reads back and finds the faces in; and the demo streaming it through the real
stack (a tiny untrained model: this checks the wiring — one track per person, scored against the truth — not the
recogniser, whose accuracy the main job prints)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eqface.camera.clip import Appearance, ClipSpec, render_frames, truth_for_track, write_clip
from eqface.camera.video import open_video
from eqface.data.decode import decode_image
from eqface.stack.demo import DemoOptions, build_subjects
from tests.test_camera import mtcnn_weights  # noqa: F401 (a fixture: the default detector's weights, installed)
from tests.test_stack import assert_all_gone, eqface_cli, tiny_model  # noqa: F401 (a fixture: the tiny served model)

SPEC = ClipSpec(frames_per_person=12, gap_frames=3, photo_every=4, seed=3)


@pytest.fixture(scope="module")
def people(shared_data) -> list[tuple[str, list[np.ndarray]]]:
    subjects, _ = build_subjects(DemoOptions(known=2, visitors=1, frames=3), shared_data)
    return [(s.display_name, [decode_image(b) for b in s.clip_images]) for s in subjects]


def test_clip_truth_and_degradations(people):
    frames = render_frames(people, SPEC)
    rendered = []
    while True:
        try:
            rendered.append(next(frames))
        except StopIteration as end:
            appearances = end.value
            break
    n, gap = SPEC.frames_per_person, SPEC.gap_frames
    assert len(rendered) == len(people) * (n + gap)
    assert [a.identity for a in appearances] == [name for name, _ in people]
    assert [(a.first_frame, a.last_frame) for a in appearances] == [
        (p * (n + gap), p * (n + gap) + n - 1) for p in range(3)
    ]
    assert [a.family for a in appearances] == list(SPEC.families[:3])  # held-out families, one per person
    for a in appearances:
        assert a.degraded_frames and set(a.degraded_frames) < set(range(a.first_frame, a.last_frame + 1))
    assert all(owner is None for _, owner in rendered[n : n + gap])  # the empty scene between two people
    scene = rendered[n][0]
    assert all(np.array_equal(frame, scene) for frame, _ in rendered[n : n + gap])
    # a person is on screen: the frame differs from the empty scene, and the face moves from frame to frame
    first, last = rendered[0][0], rendered[n - 1][0]

    def changed(a: np.ndarray, b: np.ndarray) -> int:
        return int((np.abs(a.astype(int) - b).max(axis=2) > 20).sum())

    assert changed(first, scene) > 3000 and changed(first, last) > 3000  # a ≥ 110 px face, moved


def test_written_clip_is_read_back_and_its_faces_found(people, tmp_path, mtcnn_weights):  # noqa: F811
    from eqface.camera.detectors import create_detector

    clip = write_clip(tmp_path / "people.mp4", people, SPEC)
    truth = json.loads(clip.truth_path.read_text())
    assert truth["frames"] == clip.frames == 3 * (SPEC.frames_per_person + SPEC.gap_frames)
    reader, frames, _ = open_video(str(clip.path))
    detector = create_detector(min_size=24.0)
    found = {}
    try:
        for vf in frames:
            assert vf.image.shape == (360, 640, 3)
            found[vf.index] = len(detector.detect(vf.image))
    finally:
        reader.close()
    assert len(found) == clip.frames
    on_screen = {i for a in clip.appearances for i in range(a.first_frame, a.last_frame + 1)}
    clean = on_screen - {i for a in clip.appearances for i in a.degraded_frames}
    assert sum(found[i] == 1 for i in clean) >= 0.9 * len(clean), found
    assert all(found[i] == 0 for i in set(found) - on_screen), found  # nobody in the gaps


def test_truth_for_track_takes_the_largest_overlap():
    a = (Appearance("a", 0, 9, "jpeg"), Appearance("b", 12, 21, "exposure"))
    assert truth_for_track(a, 2, 8).identity == "a"
    assert truth_for_track(a, 8, 20).identity == "b"
    assert truth_for_track(a, 30, 40) is None


def test_clip_spec_refuses_training_augmentation_and_empty_clips():
    with pytest.raises(ValueError, match="unknown degradation families"):
        ClipSpec(families=("blur",))
    with pytest.raises(ValueError, match="frames_per_person"):
        ClipSpec(frames_per_person=1)
    with pytest.raises(ValueError, match="at least one person"):
        next(render_frames([], SPEC))


@pytest.mark.integration
def test_demo_streams_the_clip_through_the_camera_client(tiny_model, shared_data, tmp_path, mtcnn_weights):  # noqa: F811
    state_dir = tmp_path / "demo"
    result = eqface_cli(
        "stack",
        "demo",
        "--model",
        str(tiny_model),
        "--state-dir",
        str(state_dir),
        "--subjects",
        "2",
        "--visitors",
        "1",
        "--frames",
        "2",
        "--fps",
        "20",
        "--faces",
        "celeba",
        "--no-prometheus",
        "--clip-frames",
        "20",
        timeout=600,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "camera clip:" in out and "people.mp4 (72 frames at 10 fps, 640×360" in out, out
    summary = json.loads((state_dir / "clip" / "stream" / "summary.json").read_text())
    truth = json.loads((state_dir / "clip" / "people.mp4.json").read_text())
    people = [a["identity"] for a in truth["appearances"]]
    verdict_lines = [line for line in out.splitlines() if line.startswith("  clip/") and " expected " in line]
    assert len(verdict_lines) == len(summary["tracks"]), out
    # one track per person crossing the scene, following them from (nearly) entry to exit
    assert len(summary["tracks"]) == len(people), summary["tracks"]
    for track, appearance in zip(summary["tracks"], truth["appearances"], strict=True):
        assert track["first_frame"] <= appearance["first_frame"] + 3
        assert track["last_frame"] >= appearance["last_frame"] - 3
        answered = [f for f in track["frames"] if f["quality"] is not None]
        assert len(answered) >= 8  # every detected face went through the aggregator and Triton
    for line, person in zip(verdict_lines, people, strict=True):
        assert f"truth {person}" in line
    assert "people identified right" in out
    assert "no child process left" in out
    assert_all_gone(state_dir)
