"""The demo "video": several subjects in front of cameras, some frames degraded, streamed to the aggregator of a running
stack; prints each subject's evolving quality, QWFA decision and identification, then a summary.

Faces are real when the CelebA pack is present (identities among the pack's last ``held_out`` labels, which every
preset and the BYOR Step 2 hold out of training), synthetic otherwise (tests). Known subjects are enrolled first from a
few clean images; one visitor is not. Degraded frames use the held-out families of ``eqface.eval.conditions`` (JPEG,
motion blur, exposure, rescale), never the training augmentation. Each subject keeps a few more photos for the camera
clip (``eqface.stack.clip_demo``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eqface import paths
from eqface.data.decode import decode_image
from eqface.data.image_ops import encode_image
from eqface.eval import conditions

if TYPE_CHECKING:
    from eqface.service.client import AggregatorClient

CELEBA_PACK = "celeba_wild_subset_rgb112.npz"
DEGRADATIONS = ("jpeg", "motion_blur", "exposure", "rescale")  # held-out families (eqface.eval.conditions)
ENROLL_IMAGES = 3


@dataclass
class Frame:
    image: bytes
    condition: str  # "clean" or "<degradation> <strength>"


@dataclass
class Subject:
    """One tracked face stream and the truth about it."""

    subject_id: str
    identity_id: str | None  # None: not enrolled (a visitor)
    display_name: str
    enroll_images: list[bytes]
    frames: list[Frame]
    clip_images: list[bytes] = field(default_factory=list)  # photos for the camera clip, used nowhere else
    results: list[tuple[str, float, bool]] = field(default_factory=list)  # (status, quality, degraded)
    top_match: tuple[str, float] | None = None


@dataclass(frozen=True)
class DemoOptions:
    known: int = 4
    visitors: int = 1
    frames: int = 16
    degraded_fraction: float = 0.4
    fps: float = 4.0  # ticks per second; each tick carries one frame of every subject
    match_threshold: float = 0.5  # below it the best gallery match is reported as "unknown"
    seed: int = 0
    clip_photos: int = 3  # photos per subject kept for the camera clip
    held_out: int = 40  # the pack's last labels every model here was trained without (DEFAULT_EVAL_IDENTITIES)


# ------------------------------------------------------------------------------------------------ faces
FACES = ("auto", "celeba", "synthetic")


def faces_dir(faces: str, trained_on: str, out=print) -> Path | None:
    """The shared data folder to take the video's real faces from, None for synthetic ones.

    ``auto`` streams real faces when the CelebA pack is there, unless the model was trained on synthetic faces only
    (real faces are outside its domain: its quality scores them near 0); ``celeba`` insists on the pack.
    """
    if faces not in FACES:
        raise ValueError(f"unknown faces {faces!r}; valid: {', '.join(FACES)}")
    if faces == "synthetic":
        return None
    if faces == "auto" and trained_on == "synthetic":
        out(
            "the model was trained on synthetic faces (its run's config.json): streaming synthetic faces; "
            "--faces celeba streams real ones"
        )
        return None
    shared = paths.shared_data_dir()
    if shared is not None and (shared / CELEBA_PACK).is_file():
        return shared
    if faces == "celeba":
        raise FileNotFoundError(f"--faces celeba: {CELEBA_PACK} not found (../shared/data or ${paths.ENV_VAR})")
    out(f"{CELEBA_PACK} not found (../shared/data or ${paths.ENV_VAR}): streaming synthetic faces")
    return None


def build_subjects(options: DemoOptions, data_dir: Path | None, prefix: str = "") -> tuple[list[Subject], str]:
    """The demo's subjects and a one-line description of where their faces come from; ``prefix`` starts every
    subject id (a stack that keeps its store answers a replayed id's frames DUPLICATE)."""
    rng = np.random.default_rng(options.seed)
    pack = data_dir / CELEBA_PACK if data_dir else None
    if pack is not None and pack.is_file():
        people = _celeba_people(pack, options, rng)
        source = f"real faces: CelebA held-out identities ({pack})"
    else:
        people = _synthetic_people(options, rng)
        source = "synthetic faces of identities no preset trains on"
    subjects = []
    for i, (name, images) in enumerate(people):
        known = i < options.known
        frames = [
            _frame(img, options.degraded_fraction, rng)
            for img in images[ENROLL_IMAGES : ENROLL_IMAGES + options.frames]
        ]
        subjects.append(
            Subject(
                subject_id=f"{prefix}cam{1 + i % 2}/track-{i + 1:02d}",
                identity_id=name if known else None,
                display_name=name if known else f"visitor ({name})",
                enroll_images=images[:ENROLL_IMAGES] if known else [],
                frames=frames,
                clip_images=images[ENROLL_IMAGES + options.frames :],
            )
        )
    return subjects, source


def _celeba_people(pack: Path, options: DemoOptions, rng: np.random.Generator) -> list[tuple[str, list[bytes]]]:
    with np.load(pack) as npz:
        data, offsets = npz["jpeg_bytes"], npz["jpeg_offsets"]
        identity, celeba_id, faces = npz["identity"], npz["celeba_identity"], npz["n_faces_detected"]
    need = ENROLL_IMAGES + options.frames + options.clip_photos
    # the last labels are every preset's and the BYOR Step 2's held-out identities (eqface.data.split_identities,
    # eqface.byor DEFAULT_EVAL_IDENTITIES); one face per photo only
    held_out = np.unique(identity)[::-1][: options.held_out]
    usable = [int(i) for i in held_out if np.sum((identity == i) & (faces == 1)) >= need]
    chosen = usable[: options.known + options.visitors]
    if len(chosen) < options.known + options.visitors:
        raise ValueError(
            f"{pack}: only {len(chosen)} of its {options.held_out} held-out identities have {need} single-face "
            f"images ({options.known + options.visitors} needed); ask for fewer --frames or subjects"
        )
    people = []
    for ident in chosen:
        idx = np.flatnonzero((identity == ident) & (faces == 1))[:need]
        images = [data[offsets[i] : offsets[i + 1]].tobytes() for i in idx]
        people.append((f"celeb-{int(celeba_id[idx[0]])}", images))
    return people


def _synthetic_people(options: DemoOptions, rng: np.random.Generator) -> list[tuple[str, list[bytes]]]:
    from eqface.data.synthetic import identity_prototype, render_sample

    people = []
    for i in range(options.known + options.visitors):
        proto = identity_prototype(np.random.default_rng([options.seed, 7000 + i]), (112, 112))  # unseen in training
        count = ENROLL_IMAGES + options.frames + options.clip_photos
        images = [encode_image(render_sample(proto, rng), quality=92) for _ in range(count)]
        people.append((f"synthetic-{i + 1:02d}", images))
    return people


def _frame(image: bytes, degraded_fraction: float, rng: np.random.Generator) -> Frame:
    if rng.random() >= degraded_fraction:
        return Frame(image, "clean")
    kind = DEGRADATIONS[rng.integers(len(DEGRADATIONS))]
    degraded = conditions.apply(decode_image(image, "demo frame"), kind, rng)
    return Frame(encode_image(degraded, quality=90), kind)


# ------------------------------------------------------------------------------------------------ streaming
def enroll(client: AggregatorClient, subjects: list[Subject], out=print) -> None:
    for s in (s for s in subjects if s.identity_id):
        response = client.enroll(s.identity_id, s.display_name, s.enroll_images)
        qualities = ", ".join(f"{q:.2f}" for q in response.image_qualities)
        out(
            f"  enrolled {s.identity_id:<14} from {len(s.enroll_images)} images (quality {qualities}); "
            f"gallery size {response.gallery_size}"
        )


def _requests(subjects: list[Subject], fps: float) -> Iterator:
    from eqface.service.client import image_frame
    from eqface.service.v1 import aggregator_pb2 as pb

    ticks = max(len(s.frames) for s in subjects)
    for t in range(ticks):
        frames = [image_frame(s.subject_id, t + 1, s.frames[t].image) for s in subjects if t < len(s.frames)]
        yield pb.StreamFramesRequest(frames=frames, top_k=1)
        time.sleep(1.0 / fps)


def _header(width: int) -> str:
    return (
        f"{'tick':>4}  {'subject':<{width}} {'truth':<22} {'frame':<15} {'quality':>7}  {'result':<20} "
        f"{'merged':>6}  {'s_sum':>6}  identified as (cosine)"
    )


def _width(subjects: list[Subject]) -> int:
    return max(13, *(len(s.subject_id) for s in subjects))


def stream(client: AggregatorClient, subjects: list[Subject], options: DemoOptions, out=print) -> None:
    """Streams every subject's frames, one tick at a time, printing one line per frame as the answers come."""
    from eqface.service.v1 import aggregator_pb2 as pb

    by_id = {s.subject_id: s for s in subjects}
    width = _width(subjects)
    out(_header(width))
    call = client.stream_frames(_requests(subjects, options.fps), timeout_s=600)
    try:
        for tick, response in enumerate(call, start=1):
            matches = {m.subject_id: m.matches[0] for m in response.matches if m.matches}
            for r in response.results:
                s = by_id[r.subject_id]
                status = pb.FrameStatus.Name(r.status).removeprefix("FRAME_STATUS_")
                condition = s.frames[tick - 1].condition
                s.results.append((status, r.quality, condition != "clean"))
                match = matches.get(r.subject_id)
                if match is not None:
                    s.top_match = (match.identity_id, match.score)
                out(
                    f"{tick:>4}  {s.subject_id:<{width}} {s.display_name[:22]:<22} {condition:<15} {r.quality:>7.2f}  "
                    f"{status:<20} {r.accepted_count:>3}/{r.frame_count:<3} {r.s_sum:>6.2f}  "
                    f"{_identified(s, options.match_threshold)}"
                )
    finally:
        call.cancel()  # Ctrl-C mid-stream: end the call before the stack stops


def _identified(s: Subject, threshold: float) -> str:
    if s.top_match is None:
        return "-"
    name, score = s.top_match
    if score < threshold:
        verdict = "✓" if s.identity_id is None else "✗"
        return f"unknown (best {name} {score:.2f}) {verdict}"
    return f"{name} ({score:.2f}) {'✓' if name == s.identity_id else '✗'}"


def summary(subjects: list[Subject], options: DemoOptions, out=print) -> dict[str, float]:
    """Prints the per-subject table and the totals; returns the totals (for tests)."""
    width = _width(subjects)
    out(
        f"{'subject':<{width}} {'truth':<22} {'frames':>6} {'merged':>6} {'rej. quality':>12} {'rej. similarity':>15} "
        f"{'q clean':>7} {'q degraded':>10}  final identification"
    )
    correct = 0
    clean_q, degraded_q = [], []
    for s in subjects:
        statuses = [st for st, _, _ in s.results]
        merged = sum(st in ("SEEDED", "ACCEPTED", "RESEEDED") for st in statuses)
        qc = [q for _, q, d in s.results if not d]
        qd = [q for _, q, d in s.results if d]
        clean_q += qc
        degraded_q += qd
        verdict = _identified(s, options.match_threshold)
        correct += verdict.endswith("✓")
        out(
            f"{s.subject_id:<{width}} {s.display_name[:22]:<22} {len(statuses):>6} {merged:>6} "
            f"{statuses.count('REJECTED_QUALITY'):>12} {statuses.count('REJECTED_SIMILARITY'):>15} "
            f"{_mean(qc):>7.2f} {_mean(qd):>10.2f}  {verdict}"
        )
    totals = {
        "identified_correctly": correct,
        "subjects": len(subjects),
        "mean_quality_clean": _mean(clean_q),
        "mean_quality_degraded": _mean(degraded_q),
    }
    out(
        f"identification: {correct}/{len(subjects)} subjects right (enrolled: top-1 identity with cosine ≥ "
        f"{options.match_threshold}; visitors: no match ≥ {options.match_threshold}); mean quality: clean frames "
        f"{totals['mean_quality_clean']:.2f}, degraded frames {totals['mean_quality_degraded']:.2f}"
    )
    return totals


def enroll_and_stream(
    aggregator: str, rounds: list[list[Subject]], options: DemoOptions, out=print, frames_out=None, auth=None
):
    """Enrolls the first round's known subjects, streams each round's subjects (one line per frame to ``frames_out``,
    default ``out``), prints the last round's summary and returns its totals. ``auth``: the aggregator's
    ``ClientAuth`` (the stack's client certificate; None: plaintext)."""
    from eqface.service.client import AggregatorClient

    with AggregatorClient(aggregator, auth=auth) as client:
        out("\nenrolling the gallery (images → Triton → QWFAF template):")
        enroll(client, rounds[0], out=out)
        for subjects in rounds:
            out(f"\nstreaming {len(subjects)} subjects at {options.fps:g} ticks/s:")
            stream(client, subjects, options, out=frames_out or out)
    out("\nsummary:")
    return summary(rounds[-1], options, out=out)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
