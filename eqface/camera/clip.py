"""A test video made from real face photos: each person walks across a 640×360 scene (translating, growing as they
come closer), some stretches of frames degraded by the held-out families of ``eqface.eval.conditions`` (JPEG, motion
blur, exposure, rescale — never the training augmentation), written as a real video file through
:class:`eqface.camera.video.VideoWriter`, with the truth (who is on screen in which frames, which frames are degraded)
beside it so a stream's tracks can be scored.

The faces are the caller's (e.g. held-out identities of a face pack); nothing here invents a face.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from eqface.eval import conditions

CLIP_FAMILIES = ("jpeg", "motion_blur", "exposure", "rescale")


@dataclass(frozen=True)
class ClipSpec:
    size: tuple[int, int] = (360, 640)  # H, W
    fps: float = 10.0
    frames_per_person: int = 30
    gap_frames: int = 4  # empty scene between two people
    face_px: tuple[int, int] = (110, 170)  # pasted crop side at the first and the last frame of a person
    photo_every: int = 10  # frames between changes of photo (a new pose of the same person)
    degraded_span: tuple[float, float] = (0.35, 0.75)  # the part of each person's frames that is degraded
    families: tuple[str, ...] = CLIP_FAMILIES  # one per person, in turn
    seed: int = 0

    def __post_init__(self) -> None:
        if self.frames_per_person < 2 or self.gap_frames < 0 or self.photo_every < 1 or self.fps <= 0:
            raise ValueError(
                f"a clip needs frames_per_person ≥ 2, gap_frames ≥ 0, photo_every ≥ 1 and fps > 0, got {self}"
            )
        unknown = [f for f in self.families if f not in conditions.FAMILIES]
        if unknown:
            raise ValueError(f"unknown degradation families {unknown}; valid: {', '.join(conditions.FAMILIES)}")


@dataclass(frozen=True)
class Appearance:
    """Who is on screen from ``first_frame`` to ``last_frame`` (inclusive) and how their frames were degraded."""

    identity: str
    first_frame: int
    last_frame: int
    family: str
    degraded_frames: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class Clip:
    path: Path
    truth_path: Path
    frames: int
    fps: float
    appearances: tuple[Appearance, ...]


def background(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A plain indoor-like scene: a vertical gradient wall, a floor band and a few soft blocks; uint8 RGB."""
    h, w = size
    y = np.linspace(0.0, 1.0, h)[:, None, None]
    wall = (1 - y) * np.array([186.0, 178.0, 160.0]) + y * np.array([120.0, 116.0, 110.0])
    img = np.broadcast_to(wall, (h, w, 3)).copy()
    img[int(0.8 * h) :] = np.array([92.0, 80.0, 70.0])
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 80)), int(rng.integers(0, int(0.7 * h)))
        img[y0 : y0 + int(rng.integers(30, 90)), x0 : x0 + int(rng.integers(40, 120))] = rng.uniform(60, 200, 3)
    img += rng.normal(0.0, 3.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def face_mask(side: int) -> np.ndarray:
    """Alpha [side, side, 1]: a feathered oval over the face of an aligned crop scaled to ``side`` (the detector
    sees a face in a scene, not a square photo)."""
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float32)
    oval = (((xx - 56) / 47) ** 2 + ((yy - 60) / 55) ** 2 <= 1.0).astype(np.uint8) * 255
    mask = Image.fromarray(oval).filter(ImageFilter.GaussianBlur(4)).resize((side, side), Image.BILINEAR)
    return np.asarray(mask, dtype=np.float64)[:, :, None] / 255.0


def _paste(frame: np.ndarray, face: np.ndarray, centre: tuple[float, float], side: int) -> None:
    patch = np.asarray(Image.fromarray(face).resize((side, side), Image.BILINEAR), dtype=np.float64)
    h, w = frame.shape[:2]
    top, left = round(centre[0] - side / 2), round(centre[1] - side / 2)
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + side, h), min(left + side, w)
    if t1 <= t0 or l1 <= l0:
        return
    alpha = face_mask(side)[t0 - top : t1 - top, l0 - left : l1 - left]
    part = patch[t0 - top : t1 - top, l0 - left : l1 - left]
    region = frame[t0:t1, l0:l1].astype(np.float64)
    frame[t0:t1, l0:l1] = np.clip(np.rint(alpha * part + (1 - alpha) * region), 0, 255).astype(np.uint8)


def render_frames(people: list[tuple[str, list[np.ndarray]]], spec: ClipSpec = ClipSpec()):
    """Yields (frame, appearance index or None) for the whole clip and finally returns the appearances.

    ``people``: (identity, aligned face photos uint8 RGB) in order of appearance; each person crosses the scene once.
    """
    if not people:
        raise ValueError("a clip needs at least one person")
    rng = np.random.default_rng(spec.seed)
    scene = background(spec.size, rng)
    h, w = spec.size
    n = spec.frames_per_person
    d0, d1 = round(spec.degraded_span[0] * n), round(spec.degraded_span[1] * n)
    appearances = []
    index = 0
    for p, (identity, photos) in enumerate(people):
        if not photos:
            raise ValueError(f"no photo of {identity}")
        family = spec.families[p % len(spec.families)] if spec.families else "none"
        direction = 1 if p % 2 == 0 else -1  # alternate entering from the left and from the right
        y_start, y_end = rng.uniform(0.35, 0.5) * h, rng.uniform(0.4, 0.55) * h
        degraded = []
        for t in range(n):
            u = t / max(1, n - 1)
            side = round(spec.face_px[0] + u * (spec.face_px[1] - spec.face_px[0]))
            x = (0.18 + 0.64 * u) * w if direction > 0 else (0.82 - 0.64 * u) * w
            face = photos[(t // spec.photo_every) % len(photos)]
            frame = scene.copy()
            patch = face
            if spec.families and d0 <= t < d1:
                patch = conditions.apply(np.asarray(Image.fromarray(face).resize((side, side))), family, rng)
                degraded.append(index)
            _paste(frame, patch, (y_start + u * (y_end - y_start), x), side)
            yield frame, p
            index += 1
        appearances.append(Appearance(identity, index - n, index - 1, family, tuple(degraded)))
        for _ in range(spec.gap_frames):
            yield scene.copy(), None
            index += 1
    return appearances


def write_clip(path: Path, people: list[tuple[str, list[np.ndarray]]], spec: ClipSpec = ClipSpec()) -> Clip:
    """Renders the clip into ``path`` (mp4/avi, the camera's own writer) and its truth into ``<path>.json``."""
    from eqface.camera.video import VideoWriter

    path = Path(path)
    writer = VideoWriter(path, spec.fps, spec.size)
    frames = render_frames(people, spec)
    count = 0
    try:
        while True:
            try:
                frame, _ = next(frames)
            except StopIteration as end:
                appearances = tuple(end.value)
                break
            writer.write(frame)
            count += 1
    finally:
        writer.close()
    truth_path = path.with_suffix(path.suffix + ".json")
    truth = {"spec": asdict(spec), "frames": count, "appearances": [asdict(a) for a in appearances]}
    truth_path.write_text(json.dumps(truth, indent=1) + "\n")
    return Clip(path, truth_path, count, spec.fps, appearances)


def truth_for_track(appearances: tuple[Appearance, ...], first_frame: int, last_frame: int) -> Appearance | None:
    """The appearance that overlaps the frames [first_frame, last_frame] the most, None when none does."""
    best, best_overlap = None, 0
    for a in appearances:
        overlap = min(last_frame, a.last_frame) - max(first_frame, a.first_frame) + 1
        if overlap > best_overlap:
            best, best_overlap = a, overlap
    return best
