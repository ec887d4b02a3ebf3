"""The demo's camera part: a real video clip of the demo subjects (their photos kept for the clip, held-out
identities, moving across a scene with held-out degradations; ``eqface.camera.clip``) streamed through the camera
client (detect, align, track, uplink) into the aggregator and Triton; each person's track scored against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqface.camera.clip import Clip, ClipSpec, truth_for_track, write_clip
from eqface.data.decode import decode_image
from eqface.stack.demo import Subject

CLIP_FILE = "people.mp4"


@dataclass(frozen=True)
class TrackVerdict:
    subject_id: str
    truth: str  # the identity on screen ("" when the track matches no appearance)
    expected: str | None  # the gallery identity it should be identified as, None for a visitor
    identified: str | None  # the final identification at or above the match threshold, None for unknown
    mean_quality_clean: float
    mean_quality_degraded: float
    family: str

    @property
    def correct(self) -> bool:
        return self.identified == self.expected


def make_clip(subjects: list[Subject], folder: Path, spec: ClipSpec = ClipSpec()) -> Clip:
    """Writes the clip of every subject that has clip photos (in the demo's order) into ``folder``."""
    people = [
        (_truth_name(s), [decode_image(b, "clip photo") for b in s.clip_images]) for s in subjects if s.clip_images
    ]
    if not people:
        raise ValueError("no subject has photos for the clip (DemoOptions.clip_photos = 0?)")
    return write_clip(folder / CLIP_FILE, people, spec)


def _truth_name(s: Subject) -> str:
    return s.identity_id or s.display_name.removeprefix("visitor (").removesuffix(")")


def score_tracks(summary: dict, clip: Clip, subjects: list[Subject], threshold: float) -> list[TrackVerdict]:
    """Each track of a stream summary (``StreamSession.run``) against the clip's truth."""
    enrolled = {s.identity_id for s in subjects if s.identity_id}
    verdicts = []
    for t in summary["tracks"]:
        truth = truth_for_track(clip.appearances, t["first_frame"], t["last_frame"])
        degraded = set(truth.degraded_frames) if truth else set()
        clean_q = [f["quality"] for f in t["frames"] if f["quality"] is not None and f["frame_index"] not in degraded]
        degraded_q = [f["quality"] for f in t["frames"] if f["quality"] is not None and f["frame_index"] in degraded]
        final = t["identity"]
        verdicts.append(
            TrackVerdict(
                subject_id=t["subject_id"],
                truth=truth.identity if truth else "",
                expected=truth.identity if truth and truth.identity in enrolled else None,
                identified=final[0] if final and final[1] >= threshold else None,
                mean_quality_clean=float(np.mean(clean_q)) if clean_q else float("nan"),
                mean_quality_degraded=float(np.mean(degraded_q)) if degraded_q else float("nan"),
                family=truth.family if truth else "",
            )
        )
    return verdicts


def stream_clip(
    aggregator: str,
    subjects: list[Subject],
    folder: Path,
    threshold: float,
    out=print,
    spec: ClipSpec = ClipSpec(),
    auth=None,
) -> list[TrackVerdict]:
    """Makes the clip, streams it with ``eqface.camera`` into ``aggregator`` (whose gallery the image-mode demo
    enrolled), prints the camera client's lines and one verdict per track; returns the verdicts. ``auth``: the
    aggregator's ``ClientAuth`` (None: plaintext)."""
    from eqface.camera.session import StreamOptions, StreamSession

    clip = make_clip(subjects, folder, spec)
    out(
        f"\ncamera clip: {clip.path} ({clip.frames} frames at {clip.fps:g} fps, {spec.size[1]}×{spec.size[0]}; "
        f"{len(clip.appearances)} people cross the scene, degraded stretches: "
        f"{', '.join(f'{a.identity} {a.family}' for a in clip.appearances)})"
    )
    out("streaming it through the camera client (MTCNN → align → track → aggregator → Triton):")
    options = StreamOptions(
        server=aggregator,
        out_dir=folder / "stream",
        subject_prefix="clip/",
        match_threshold=threshold,
        video_out=False,
        auth=auth,
    )
    summary = StreamSession(str(clip.path), options, out=out).run()
    verdicts = score_tracks(summary, clip, subjects, threshold)
    out("\ncamera clip, per track (truth from the clip's generator):")
    for v in verdicts:
        expected = v.expected or "unknown (visitor)"
        got = v.identified or "unknown"
        out(
            f"  {v.subject_id:<12} truth {v.truth:<14} expected {expected:<18} identified {got:<14} "
            f"{'✓' if v.correct else '✗'}  quality clean {v.mean_quality_clean:.2f}, {v.family} "
            f"{v.mean_quality_degraded:.2f}"
        )
    people = {a.identity for a in clip.appearances}
    right = {v.truth for v in verdicts if v.correct}
    out(
        f"camera clip: {len(right & people)}/{len(people)} people identified right "
        f"({sum(v.correct for v in verdicts)}/{len(verdicts)} tracks)"
    )
    return verdicts
