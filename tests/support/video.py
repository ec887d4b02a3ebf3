"""A short real video for the camera tests: real CelebA faces (held-out identities, one face per photo) composed into
scenes where people come and go, move across the picture, change photos every few frames (pose, expression) and
pass through bursts of degradation (blur, low resolution, noise, occlusion); encoded to mp4 with the truth kept.

Faces are pasted with a feathered oval mask, so the detector sees a face in a scene rather than a square photo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from eqface.data.augment import degrade
from eqface.data.decode import decode_image

CELEBA_PACK = "celeba_wild_subset_rgb112.npz"
DEGRADATIONS = (("blur", 0.8), ("noise", 0.9), ("occlusion", 0.8), ("resolution", 0.9))


@dataclass(frozen=True)
class Appearance:
    """One person on screen: frames [first, last], moving from ``start`` to ``end`` (top-left corner, pixels)."""

    first: int
    last: int
    start: tuple[float, float]
    end: tuple[float, float]
    size: int
    degraded: tuple[tuple[int, int], ...]  # frame ranges [a, b) with a degradation


DEFAULT_SCRIPT = (
    Appearance(0, 35, (40, 30), (200, 50), 120, ((10, 14), (26, 30))),
    Appearance(12, 59, (470, 200), (300, 190), 110, ((30, 34), (46, 50))),
    Appearance(40, 71, (150, 120), (330, 30), 128, ((52, 56), (62, 66))),
)


@dataclass
class Person:
    name: str  # gallery identity id: celeb-<CelebA id>
    index: int
    appearance: Appearance
    photos: list[np.ndarray]  # RGB 112×112 aligned crops shown in the video
    enroll_images: list[bytes]  # other photos of the same person, for the gallery


@dataclass
class FaceTruth:
    name: str
    box: tuple[float, float, float, float]  # where the aligned crop was pasted
    condition: str  # "clean" or "<degradation> <strength>"


@dataclass
class VideoTruth:
    path: Path
    fps: float
    frames: int
    people: list[Person]
    distractors: dict[str, list[bytes]]  # enrolled identities that never appear
    faces: list[list[FaceTruth]] = field(default_factory=list)  # per frame

    def nearest(self, frame_index: int, box: list[float]) -> FaceTruth | None:
        """The truth face whose centre is nearest the centre of ``box`` in that frame."""
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        faces = self.faces[frame_index]
        if not faces:
            return None
        return min(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2 - cx) ** 2 + ((f.box[1] + f.box[3]) / 2 - cy) ** 2)


def held_out_people(pack: Path, count: int, photos: int, enroll: int) -> list[tuple[str, list[bytes], list[bytes]]]:
    """(name, video photos, enrollment photos) of ``count`` identities from the end of the pack (every preset holds
    them out of training), single-face photos only."""
    with np.load(pack) as npz:
        data, offsets = npz["jpeg_bytes"], npz["jpeg_offsets"]
        identity, celeba_id, faces = npz["identity"], npz["celeba_identity"], npz["n_faces_detected"]
    people = []
    for ident in np.unique(identity)[::-1]:
        idx = np.flatnonzero((identity == ident) & (faces == 1))
        if len(idx) < photos + enroll:
            continue
        images = [data[offsets[i] : offsets[i + 1]].tobytes() for i in idx[: photos + enroll]]
        people.append((f"celeb-{int(celeba_id[idx[0]])}", images[enroll:], images[:enroll]))
        if len(people) == count:
            return people
    raise ValueError(f"{pack} has fewer than {count} identities with {photos + enroll} single-face photos")


def face_mask(size: int) -> np.ndarray:
    """A feathered oval over the face of an aligned crop scaled to ``size``: float [size, size] in [0, 1]."""
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float32)
    oval = (((xx - 56) / 47) ** 2 + ((yy - 60) / 55) ** 2 <= 1.0).astype(np.uint8) * 255
    mask = Image.fromarray(oval).filter(ImageFilter.GaussianBlur(4)).resize((size, size), Image.BILINEAR)
    return np.asarray(mask, dtype=np.float32)[:, :, None] / 255.0


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth, uneven backdrop (a wall with light falling on it)."""
    low = rng.uniform(60, 200, size=(4, 6, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC))


def build_video(
    shared_data: Path,
    out: Path,
    script: tuple[Appearance, ...] = DEFAULT_SCRIPT,
    frames: int = 72,
    fps: float = 12.0,
    size: tuple[int, int] = (360, 640),
    distractors: int = 2,
    seed: int = 0,
) -> VideoTruth:
    """Composes the scenes, encodes them to ``out`` (H.264 mp4, near-lossless so only the scripted degradations
    count) and returns the truth."""
    rng = np.random.default_rng(seed)
    chosen = held_out_people(shared_data / CELEBA_PACK, len(script) + distractors, photos=12, enroll=3)
    people = [
        Person(name, i, a, [decode_image(p) for p in photos], enroll)
        for i, ((name, photos, enroll), a) in enumerate(zip(chosen, script))
    ]
    truth = VideoTruth(out, fps, frames, people, {name: enroll for name, _, enroll in chosen[len(script) :]})
    backdrop = background(*size, rng)
    writer = _Mp4(out, fps, size)
    try:
        for t in range(frames):
            scene = backdrop.astype(np.float32)
            faces = []
            for person in people:
                face = _place(scene, person, t, rng)
                if face is not None:
                    faces.append(face)
            truth.faces.append(faces)
            writer.write(np.clip(scene, 0, 255).astype(np.uint8))
    finally:
        writer.close()
    return truth


def _place(scene: np.ndarray, person: Person, t: int, rng: np.random.Generator) -> FaceTruth | None:
    a = person.appearance
    if not a.first <= t <= a.last:
        return None
    u = (t - a.first) / max(a.last - a.first, 1)
    x, y = (round(a.start[k] + u * (a.end[k] - a.start[k])) for k in (0, 1))
    photo = person.photos[((t - a.first) // 3) % len(person.photos)]  # a new photo every 3 frames
    condition = "clean"
    burst = next((i for i, (b0, b1) in enumerate(a.degraded) if b0 <= t < b1), None)
    if burst is not None:
        kind, strength = DEGRADATIONS[(2 * person.index + burst) % len(DEGRADATIONS)]
        photo = degrade(photo, kind, strength, rng)
        condition = f"{kind} {strength}"
    face = np.asarray(Image.fromarray(photo).resize((a.size, a.size), Image.BILINEAR), dtype=np.float32)
    mask = face_mask(a.size)
    region = scene[y : y + a.size, x : x + a.size]
    region[:] = mask * face + (1 - mask) * region
    return FaceTruth(person.name, (x, y, x + a.size, y + a.size), condition)


class _Mp4:
    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._stream.height, self._stream.width = size
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": "16", "preset": "veryfast"}

    def write(self, image: np.ndarray) -> None:
        import av

        for packet in self._stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


def write_gallery(truth: VideoTruth, folder: Path) -> Path:
    """The enrollment photos as ``folder``/<identity>/<k>.jpg (what ``eqface stream --gallery`` reads): the people
    in the video and the distractors."""
    sets = {p.name: p.enroll_images for p in truth.people} | truth.distractors
    for name, images in sets.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(images):
            (folder / name / f"{k}.jpg").write_bytes(image)
    return folder
