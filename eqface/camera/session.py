"""One ``eqface stream`` run: frames → faces (detect — on key frames only in the realtime pipeline, followed in
between, ``eqface.camera.keyframes`` — and align) → tracks → the aggregator, one subject per track;
answers folded into per-track state and printed as they come; closed tracks identified (or enrolled); an annotated
video, a contact sheet and a JSON summary written at the end."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from eqface.camera import report
from eqface.camera.alignment import align_face
from eqface.camera.detection import Detection
from eqface.camera.detectors import DEFAULT_DETECTOR, create_detector
from eqface.camera.keyframes import KeyframeConfig, KeyframeDetector
from eqface.camera.proxy import quality_proxy
from eqface.camera.tracking import FaceTracker
from eqface.camera.uplink import Answer, OutgoingFrame, Uplink, drain
from eqface.camera.video import VideoWriter, open_video
from eqface.data.image_ops import encode_image
from eqface.service.client import ClientAuth

MERGED = ("SEEDED", "ACCEPTED", "RESEEDED")
MAX_CROPS_KEPT = 240  # per track, for the contact sheet: memory stays bounded on a long live stream
PIPELINES = ("realtime", "full")  # key frames + refinement between them; the whole detector on every frame


@dataclass(frozen=True)
class StreamOptions:
    server: str
    out_dir: Path
    subject_prefix: str
    live: bool | None = None  # None: live for cameras/URLs, frame by frame for files
    detector: str = DEFAULT_DETECTOR
    detector_weights: Path | None = None
    pipeline: str = "realtime"
    keyframes: KeyframeConfig = KeyframeConfig()  # the realtime pipeline's key frames
    # the realtime pipeline's uplink gathers frames for up to this long into one message (one Triton request, one
    # store commit for several faces); the full pipeline sends each frame at once, as it always did
    linger_s: float = 0.2
    min_face: float = 24.0
    confirm_frames: int = 2
    max_missed_frames: int = 12
    window: int = 64
    capacity: int = 256
    batch: int = 16
    top_k: int = 3
    match_threshold: float = 0.5
    enroll: bool = False
    video_out: bool = True
    max_frames: int = 0
    jpeg_quality: int = 95
    reconnect_timeout_s: float = 60.0
    progress_every_s: float = 1.0
    verbose: bool = False
    auth: ClientAuth | None = None  # TLS credentials (files) for the aggregator; None: plaintext

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ValueError(f"unknown pipeline {self.pipeline!r}; valid: {', '.join(PIPELINES)}")


@dataclass
class FrameRecord:
    frame_index: int
    sequence: int
    box: list[float]
    score: float
    proxy: float
    status: str | None = None  # None until answered; DROPPED when the client shed it
    quality: float | None = None
    similarity: float | None = None


@dataclass
class TrackState:
    track_id: int
    subject_id: str
    frames: list[FrameRecord] = field(default_factory=list)
    next_sequence: int = 1
    ended_at: int | None = None
    match: tuple[str, float] | None = None  # the latest top-1 gallery match from the stream
    final: tuple[str, float] | None = None  # Identify on the closed track's template
    enrolled_as: str | None = None
    finalized: bool = False
    crops: list[np.ndarray] = field(default_factory=list, repr=False)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.frames:
            out[f.status or "UNANSWERED"] = out.get(f.status or "UNANSWERED", 0) + 1
        return out

    def merged(self) -> int:
        return sum(f.status in MERGED for f in self.frames)

    def mean_quality(self) -> float:
        q = [f.quality for f in self.frames if f.quality is not None and f.status != "DUPLICATE"]
        return float(np.mean(q)) if q else float("nan")

    def unanswered(self) -> int:
        return sum(f.status is None for f in self.frames)


def identity_label(match: tuple[str, float] | None, threshold: float) -> str:
    if match is None:
        return "-"
    name, score = match
    return f"{name} ({score:.2f})" if score >= threshold else f"unknown (best {name} {score:.2f})"


class StreamSession:
    def __init__(self, source: str, options: StreamOptions, out: Callable[[str], None] = print) -> None:
        self.source, self.options, self.out = source, options, out
        self.tracks: dict[int, TrackState] = {}
        self._by_subject: dict[str, TrackState] = {}
        self._records: dict[tuple[str, int], FrameRecord] = {}
        self.frames_read = 0
        self.faces = 0
        weights = {"weights": options.detector_weights} if options.detector_weights else {}
        self.detector = create_detector(options.detector, min_size=options.min_face, **weights)
        # the stream's frames go through key frames and refinement (realtime) or the whole detector (full); the
        # gallery's photos always through the whole detector
        self.frame_detector = (
            KeyframeDetector(self.detector, options.keyframes) if options.pipeline == "realtime" else self.detector
        )

    def enroll_gallery(self, folder: Path) -> dict[str, list[float]]:
        """Enrolls ``folder``/<identity>/<photos> (see ``eqface.camera.gallery``) before the stream."""
        from eqface.camera.gallery import enroll, read_gallery
        from eqface.service.client import AggregatorClient

        gallery, missed = read_gallery(folder, self.detector)
        for photo in missed:
            self.out(f"  ! no face found in {photo}")
        o = self.options
        with AggregatorClient(o.server, auth=o.auth, reconnect_timeout_s=o.reconnect_timeout_s) as client:
            qualities = enroll(client, gallery)
        for identity, q in qualities.items():
            self.out(f"  enrolled {identity} from {len(q)} photos (quality {', '.join(f'{v:.2f}' for v in q)})")
        return qualities

    # ------------------------------------------------------------------------------------------ the run
    def run(self) -> dict:
        o = self.options
        o.out_dir.mkdir(parents=True, exist_ok=True)
        tracker = FaceTracker(max_missed_frames=o.max_missed_frames, confirm_frames=o.confirm_frames)
        reader, frames, live = open_video(self.source, o.live)
        expected = None if live else reader.frame_count or None
        uplink = Uplink(
            o.server,
            window=o.window,
            capacity=o.capacity,
            batch=o.batch,
            block=not live,
            top_k=o.top_k,
            reconnect_timeout_s=o.reconnect_timeout_s,
            linger_s=o.linger_s if o.pipeline == "realtime" else 0.0,
            auth=o.auth,
        ).start()
        writer = VideoWriter(o.out_dir / "annotated.mp4", reader.fps, reader.size) if o.video_out else None
        self.out(
            f"streaming {self.source} ({reader.size[1]}×{reader.size[0]}, {reader.fps:.1f} fps"
            f"{', live: frames dropped when behind' if live else ''}) to {o.server} as {o.subject_prefix}*, "
            + (
                f"realtime pipeline (whole detector every {o.keyframes.detect_every} frames)"
                if o.pipeline == "realtime"
                else "full pipeline (whole detector on every frame)"
            )
        )
        start = last_progress = time.monotonic()
        try:
            for vf in frames:
                boxes = self._step(vf, tracker, uplink)
                if writer is not None:
                    writer.write(report.annotate(vf.image, boxes, f"frame {vf.index}  t={vf.time_s:.2f}s"))
                if time.monotonic() - last_progress >= o.progress_every_s:
                    self._progress(vf.index, expected, time.monotonic() - start, uplink)
                    last_progress = time.monotonic()
                if o.max_frames and self.frames_read >= o.max_frames:
                    break
            self._end_tracks(tracker.finish(), None)
            uplink.flush()
            drain(uplink.answers, self._on_answer)
            self._finalize_ready(uplink)
            wall = time.monotonic() - start
        except BaseException:
            uplink.abort()  # Ctrl-C or a failure: do not wait for the queue to drain
            raise
        finally:
            if hasattr(frames, "stop"):
                frames.stop()
            reader.close()
            if writer is not None:
                writer.close()
        uplink.close()
        skipped = getattr(frames, "skipped", 0)
        return self._finish(wall, uplink, skipped)

    def _step(self, vf, tracker: FaceTracker, uplink: Uplink) -> list[report.Box]:
        """One frame: detect, align, track, queue each tracked face, take in the answers so far; the frame's boxes."""
        self.frames_read += 1
        detections = self.frame_detector.detect(vf.image)
        self.faces += len(detections)
        update = tracker.update(vf.index, detections, [align_face(vf.image, d.landmarks) for d in detections])
        boxes = [
            (obs.frame_index, self._submit(uplink, obs.track_id, obs.frame_index, obs.detection, obs.payload))
            for obs in update.observations
        ]  # a track confirmed now brings its earlier frames along
        self._end_tracks(update.ended, vf.index)
        drain(uplink.answers, self._on_answer)
        self._finalize_ready(uplink)
        return [box for index, box in boxes if index == vf.index]

    def _submit(self, uplink: Uplink, track_id: int, frame_index: int, detection: Detection, aligned) -> report.Box:
        o = self.options
        track = self.tracks.get(track_id)
        if track is None:
            track = self.tracks[track_id] = TrackState(track_id, f"{o.subject_prefix}track-{track_id}")
            self._by_subject[track.subject_id] = track
            self.out(f"  + {track.subject_id} appears at frame {frame_index}")
        proxy = quality_proxy(detection.score, aligned.scale, aligned.image)
        record = FrameRecord(
            frame_index,
            track.next_sequence,
            [round(float(v), 1) for v in detection.box],
            round(detection.score, 3),
            round(proxy, 3),
        )
        track.next_sequence += 1
        track.frames.append(record)
        if len(track.crops) < MAX_CROPS_KEPT:
            track.crops.append(report.thumbnail(aligned.image))
        self._records[(track.subject_id, record.sequence)] = record
        frame = OutgoingFrame(
            track.subject_id, record.sequence, encode_image(aligned.image, quality=o.jpeg_quality), proxy, tag=record
        )
        for dropped in uplink.submit(frame):
            dropped.tag.status = "DROPPED"
        last = next((f for f in reversed(track.frames) if f.quality is not None), None)
        label = (
            f"{track.subject_id.removeprefix(o.subject_prefix)} q={last.quality:.2f}"
            if last
            else track.subject_id.removeprefix(o.subject_prefix)
        )
        if track.match is not None:
            label += f" {identity_label(track.match, o.match_threshold)}"
        return report.Box(detection.box, label, last.status if last else None)

    def _on_answer(self, item: Answer | str) -> None:
        from eqface.service.client import frame_error
        from eqface.service.v1 import aggregator_pb2 as pb

        if isinstance(item, str):
            self.out(f"  ! {item}")
            return
        r = item.result
        record: FrameRecord = item.frame.tag
        track = self._by_subject[r.subject_id]
        status = pb.FrameStatus.Name(r.status).removeprefix("FRAME_STATUS_")
        if status == "DUPLICATE" and record.status not in (None, "DROPPED"):
            return
        record.status = status
        if status != "INVALID":
            record.quality = round(float(r.quality), 4)
            record.similarity = round(float(r.similarity), 4) if r.HasField("similarity") else None
        if item.matches:
            track.match = (item.matches[0].identity_id, float(item.matches[0].score))
        if self.options.verbose:
            error = frame_error(r)  # an INVALID frame's google.rpc.Status
            self.out(
                f"    {r.subject_id}#{r.sequence:<5} frame {record.frame_index:<6} quality {r.quality:.2f}  "
                f"{status:<20} merged {r.accepted_count}/{r.frame_count}  "
                f"{identity_label(track.match, self.options.match_threshold)}"
                + (f"  ({error[0].name}: {error[1]})" if error else "")
            )

    def _end_tracks(self, ended: list[int], frame_index: int | None) -> None:
        for track_id in ended:
            track = self.tracks.get(track_id)
            if track is not None and track.ended_at is None:
                track.ended_at = frame_index if frame_index is not None else track.frames[-1].frame_index

    def _finalize_ready(self, uplink: Uplink) -> None:
        """Identifies (or enrolls) each ended track once all its frames are answered."""
        for track in self.tracks.values():
            if track.ended_at is None or track.finalized or track.unanswered():
                continue
            track.finalized = True
            self._finalize(uplink, track)

    def _finalize(self, uplink: Uplink, track: TrackState) -> None:
        import grpc

        from eqface.service.v1 import aggregator_pb2 as pb

        o = self.options
        try:
            if o.enroll:
                uplink.call(
                    "Enroll",
                    pb.EnrollRequest(
                        identity_id=track.subject_id,
                        display_name=track.subject_id,
                        subject_id=track.subject_id,
                        overwrite=True,
                    ),
                )
                track.enrolled_as = track.subject_id
            response = uplink.call("Identify", pb.IdentifyRequest(subject_id=track.subject_id, top_k=o.top_k))
            if response.matches:
                track.final = (response.matches[0].identity_id, float(response.matches[0].score))
        except grpc.RpcError as exc:  # e.g. NOT_FOUND: every frame of the track was dropped or invalid
            self.out(f"  ! {track.subject_id}: {exc.code().name}: {exc.details()}")
        c = track.counts()
        enrolled = f", enrolled as {track.enrolled_as}" if track.enrolled_as else ""
        self.out(
            f"  - {track.subject_id} ends at frame {track.ended_at}: {len(track.frames)} frames, merged "
            f"{track.merged()}, rejected quality {c.get('REJECTED_QUALITY', 0)} / similarity "
            f"{c.get('REJECTED_SIMILARITY', 0)}, dropped {c.get('DROPPED', 0)}, mean quality "
            f"{track.mean_quality():.2f}{enrolled} → {identity_label(track.final, o.match_threshold)}"
        )

    def _progress(self, frame_index: int, expected: int | None, elapsed: float, uplink: Uplink) -> None:
        o = self.options
        of = f"/{expected}" if expected else ""
        tracks = "; ".join(
            f"{t.subject_id.removeprefix(o.subject_prefix)} q̄ {t.mean_quality():.2f} merged {t.merged()}/"
            f"{len(t.frames)} {identity_label(t.match, o.match_threshold)}"
            for t in self.tracks.values()
            if t.ended_at is None
        )
        self.out(
            f"[frame {frame_index + 1}{of}  {self.frames_read / elapsed:5.1f} fps  in flight "
            f"{uplink.outstanding()}] {tracks or 'no face'}"
        )

    # ------------------------------------------------------------------------------------------ the end
    def _finish(self, wall: float, uplink: Uplink, skipped: int) -> dict:
        o = self.options
        s = uplink.stats
        summary = {
            "source": self.source,
            "server": o.server,
            "subject_prefix": o.subject_prefix,
            "frames_read": self.frames_read,
            "frames_skipped_live": skipped,
            "faces_detected": self.faces,
            "pipeline": o.pipeline,
            "keyframes": asdict(self.frame_detector.stats) if o.pipeline == "realtime" else None,
            "wall_s": round(wall, 3),
            "fps": round(self.frames_read / wall, 2) if wall > 0 else None,
            "uplink": {k: v for k, v in asdict(s).items() if k != "events"},
            "tracks": [self._track_summary(t) for t in self.tracks.values()],
        }
        sheet = report.contact_sheet(
            [
                report.SheetRow(
                    f"{t.subject_id}: {len(t.frames)} frames, merged {t.merged()}, mean quality "
                    f"{t.mean_quality():.2f} -> {identity_label(t.final, o.match_threshold)}",
                    t.crops,
                    [_caption(f) for f in t.frames[: len(t.crops)]],
                    [f.status for f in t.frames[: len(t.crops)]],
                )
                for t in self.tracks.values()
            ],
            o.out_dir / "tracks.png",
            title=f"{self.source} -> {o.server}",
        )
        summary["contact_sheet"] = str(sheet)
        summary["annotated_video"] = str(o.out_dir / "annotated.mp4") if o.video_out else None
        (o.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        self.out(
            f"{len(self.tracks)} tracks; {self.frames_read} frames in {wall:.1f}s = {summary['fps']} fps end to "
            f"end; frames sent {s.sent} (resent {s.resent}), answered {s.answered}, dropped {s.dropped}, "
            f"reconnects {s.reconnects}"
        )
        for t in self.tracks.values():
            self.out(
                f"  {t.subject_id:<32} frames {len(t.frames):>4}  merged {t.merged():>4}  mean quality "
                f"{t.mean_quality():.2f}  → {identity_label(t.final, o.match_threshold)}"
            )
        self.out(f"contact sheet: {sheet}")
        if o.video_out:
            self.out(f"annotated video: {o.out_dir / 'annotated.mp4'}")
        self.out(f"summary: {o.out_dir / 'summary.json'}")
        return summary

    @staticmethod
    def _track_summary(t: TrackState) -> dict:
        return {
            "track_id": t.track_id,
            "subject_id": t.subject_id,
            "first_frame": t.frames[0].frame_index,
            "last_frame": t.frames[-1].frame_index,
            "counts": t.counts(),
            "merged": t.merged(),
            "mean_quality": round(t.mean_quality(), 4),
            "stream_match": t.match,
            "identity": t.final,
            "enrolled_as": t.enrolled_as,
            "frames": [asdict(f) for f in t.frames],
        }


def _caption(f: FrameRecord) -> str:
    if f.status == "DROPPED":
        return f"p {f.proxy:.2f}"
    return f"q {f.quality:.2f}" if f.quality is not None else "?"
