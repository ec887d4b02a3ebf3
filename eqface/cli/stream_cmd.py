"""eqface stream: faces from a video file, camera or RTSP stream, tracked and streamed to the aggregation service."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from eqface.camera.detectors import DEFAULT_DETECTOR
from eqface.camera.keyframes import KeyframeConfig

DEFAULT_STACK_STATE = Path("runs") / "stack"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stream",
        help="detect, align and track faces in a video/camera/RTSP stream and stream them to the aggregator",
        description="Detects faces (MTCNN, 5 landmarks), aligns them to the ArcFace 112×112 template, tracks "
        "them across frames and streams each track's crops as one subject to the aggregation service (image mode). "
        "Prints each track's quality, QWFA decisions and identification as the answers come; identifies (or "
        "enrolls) each track when it ends; writes an annotated video, a contact sheet (tracks.png) and summary.json. "
        "A file is processed frame by frame; a camera or URL (or --live) drops frames when the client falls behind "
        "(lowest client-side quality proxy first). Survives an aggregator restart: unanswered frames are resent with "
        "their (subject, sequence) and the service counts each once. The realtime pipeline (default) runs the whole "
        "detector on key frames only and follows the faces in between; --pipeline full detects on every frame.",
    )
    p.add_argument("source", help="video file (mp4, avi, …), camera (0 or /dev/video0) or URL (rtsp://…)")
    p.add_argument("--server", help="aggregator HOST:PORT (default: the one `eqface stack up` started)")
    auth = p.add_argument_group(
        "aggregator credentials (file paths; default with --server: plaintext, without: the stack's own)"
    )
    auth.add_argument("--ca", default=os.environ.get("EQFACE_CA"), help="CA of the server's certificate ($EQFACE_CA)")
    auth.add_argument("--cert", default=os.environ.get("EQFACE_CERT"), help="client certificate ($EQFACE_CERT)")
    auth.add_argument("--key", default=os.environ.get("EQFACE_KEY"), help="client certificate's key ($EQFACE_KEY)")
    auth.add_argument(
        "--token-file", default=os.environ.get("EQFACE_TOKEN_FILE"), help="bearer token file ($EQFACE_TOKEN_FILE)"
    )
    p.add_argument("--out", type=Path, default=Path("runs") / "stream", help="folder for the outputs")
    p.add_argument(
        "--subject-prefix",
        help="prefix of every subject id (default: <source name>-<unix time>/; a "
        "new prefix per run, since the service answers a replayed (subject, sequence) DUPLICATE)",
    )
    p.add_argument(
        "--gallery",
        type=Path,
        help="enroll first: one folder per identity (its name is the identity "
        "id) with photos; the largest face of each photo is detected, aligned and enrolled",
    )
    p.add_argument("--enroll", action="store_true", help="enroll each track when it ends, as its subject id")
    p.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pace a file like a camera and drop frames when behind (default: cameras and URLs only)",
    )
    p.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        help="face detector: mtcnn (weights from the "
        "facenet-pytorch wheel, installed by `python -m eqface.camera.weights`, which scripts/setup.sh "
        "runs) or retinaface (internal weights of unknown terms, ../shared/data/weights)",
    )
    p.add_argument(
        "--detector-weights",
        type=Path,
        help="mtcnn: the folder of pnet.pt, rnet.pt, onet.pt; retinaface: the .onnx file (default: for mtcnn "
        "$EQFACE_DETECTOR_WEIGHTS/mtcnn, else <venv>/share/eqface/mtcnn; for retinaface in $EQFACE_DETECTOR_WEIGHTS, "
        "else ../shared/data/weights)",
    )
    p.add_argument("--min-face", type=float, default=24.0, help="smallest face (pixels) to track")
    p.add_argument(
        "--pipeline",
        choices=("realtime", "full"),  # eqface.camera.session.PIPELINES
        default="realtime",
        help="realtime: the whole detector on every --detect-every-th frame, the faces followed in between by its "
        "refinement step (MTCNN's ONet on the predicted box; a face lost is re-detected at once), frames gathered "
        "for up to --linger seconds per message; full: the whole detector on every frame, each frame sent at once",
    )
    p.add_argument(
        "--detect-every",
        type=int,
        default=KeyframeConfig().detect_every,
        help="realtime: a full detection every N frames",
    )
    p.add_argument(
        "--linger", type=float, default=0.2, help="realtime: seconds a frame may wait for others to share a message"
    )
    p.add_argument("--window", type=int, default=64, help="frames sent and not answered, at most")
    p.add_argument("--queue", type=int, default=256, help="frames waiting to be sent, at most")
    p.add_argument("--match-threshold", type=float, default=0.5, help="cosine below which a match is unknown")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: the whole source)")
    p.add_argument("--no-video", action="store_true", help="do not write the annotated video")
    p.add_argument(
        "--reconnect-timeout",
        type=float,
        default=60.0,
        help="give up after this many seconds without reaching the aggregator",
    )
    p.add_argument("--verbose", action="store_true", help="print one line per answered frame")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from eqface.camera.session import StreamOptions, StreamSession
    from eqface.camera.video import SourceSpec

    # Argument problems first: a missing video or gallery is reported before any question about the server.
    SourceSpec.parse(args.source)
    if args.gallery is not None and not args.gallery.is_dir():
        raise FileNotFoundError(f"gallery folder not found: {args.gallery}")
    server, auth = (args.server, _client_auth(args)) if args.server else _stack_server()
    prefix = args.subject_prefix
    if prefix is None:
        prefix = f"{Path(args.source).stem or 'stream'}-{int(time.time())}/"
    options = StreamOptions(
        server=server,
        out_dir=args.out,
        subject_prefix=prefix,
        live=args.live,
        detector=args.detector,
        detector_weights=args.detector_weights,
        min_face=args.min_face,
        pipeline=args.pipeline,
        keyframes=KeyframeConfig(detect_every=args.detect_every),
        linger_s=args.linger,
        window=args.window,
        capacity=args.queue,
        match_threshold=args.match_threshold,
        enroll=args.enroll,
        video_out=not args.no_video,
        max_frames=args.max_frames,
        reconnect_timeout_s=args.reconnect_timeout,
        verbose=args.verbose,
        auth=auth,
    )
    session = StreamSession(args.source, options)
    if args.gallery is not None:
        session.enroll_gallery(args.gallery)
    session.run()
    return 0


def _client_auth(args: argparse.Namespace):
    from eqface.service.client import ClientAuth

    if not (args.ca or args.cert or args.key or args.token_file):
        return None
    return ClientAuth(args.ca, args.cert, args.key, args.token_file)


def _stack_server():
    """The running stack's aggregator and the client certificate the stack made for it."""
    from eqface.service.client import ClientAuth
    from eqface.stack.stack import read_state

    state = read_state(DEFAULT_STACK_STATE) or {}
    endpoints = state.get("endpoints", {})
    server = endpoints.get("aggregator_grpc")
    if state.get("status") != "ready" or not server:
        raise ValueError(f"no --server given and no running stack in {DEFAULT_STACK_STATE} (`eqface stack up`)")
    return server, ClientAuth.from_json(endpoints.get("aggregator_auth"))
