"""eqface stack: the whole serving stack on this machine — Triton, the aggregation service, Prometheus.

demo runs it for one streamed demo video and stops; up, down and status keep it running in the background.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_RUNS = Path("runs")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stack",
        help="run Triton + the aggregation service + Prometheus locally (demo, up, down)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stack = p.add_subparsers(dest="stack_command", required=True, metavar="SUBCOMMAND")
    demo = stack.add_parser(
        "demo",
        help="start the stack, stream a demo video of several subjects, print what happens, stop",
        description="Brings up the stack (by default on the model built once by the bring-your-own-recogniser "
        "path from the shared pretrained recogniser and the CelebA pack, then reused), enrolls a gallery of "
        "held-out identities, streams their faces with some frames degraded, prints each subject's quality, QWFA "
        "decision and identification as the answers come, then streams a real video clip of the same people "
        "through the camera client and scores each track, then a summary and what Prometheus saw. Ctrl-C stops "
        "everything cleanly at any point.",
    )
    _add_stack_options(demo, default_state=DEFAULT_RUNS / "stack-demo")
    _add_video_options(demo)
    demo.add_argument(
        "--no-clip", action="store_true", help="skip the camera clip (detect, align, track) after the image stream"
    )
    demo.add_argument("--clip-frames", type=int, default=30, help="camera clip: frames per person crossing the scene")
    demo.set_defaults(func=run_demo)
    stream = stack.add_parser(
        "stream",
        help="stream the demo video into a stack started by `up` (traffic for the dashboards)",
        description="Enrolls the demo gallery and streams the demo video --rounds times into the aggregator of a "
        "running stack (subject ids get a per-run prefix, so the stack's stored state is never replayed).",
    )
    stream.add_argument("--state-dir", type=Path, default=DEFAULT_RUNS / "stack", help="the folder `up` used")
    stream.add_argument("--rounds", type=int, default=1, help="times to stream the video (new subject ids each)")
    stream.add_argument("--quiet", action="store_true", help="print only the summary")
    _add_video_options(stream)
    stream.set_defaults(func=run_stream)
    up = stack.add_parser(
        "up",
        help="start the stack in the background and print its ports",
    )
    _add_stack_options(up, default_state=DEFAULT_RUNS / "stack")
    up.set_defaults(func=run_up)
    for name, func, text in (
        ("down", run_down, "stop a stack started by `up` (every process it started)"),
        ("status", run_status, "show a stack started by `up`: ports, processes, targets"),
    ):
        q = stack.add_parser(name, help=text)
        q.add_argument("--state-dir", type=Path, default=DEFAULT_RUNS / "stack", help="the folder `up` used")
        q.set_defaults(func=func)


def _add_video_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subjects", type=int, default=4, help="enrolled subjects in the video")
    p.add_argument("--visitors", type=int, default=1, help="subjects in the video who are not enrolled")
    p.add_argument("--frames", type=int, default=16, help="frames per subject")
    p.add_argument(
        "--degraded",
        type=float,
        default=0.4,
        help="share of frames degraded (held-out families: JPEG, motion blur, exposure, rescale)",
    )
    p.add_argument("--fps", type=float, default=4.0, help="video ticks per second (one frame per subject each)")
    p.add_argument("--match-threshold", type=float, default=0.5, help="cosine below which a match is unknown")
    p.add_argument(
        "--faces",
        choices=("auto", "celeba", "synthetic"),  # eqface.stack.demo.FACES
        default="auto",
        help="auto: real CelebA faces when ../shared/data has them and the model was not trained on "
        "synthetic faces only, synthetic otherwise (with --train-with byor: real faces or an error)",
    )


def _video_options(args: argparse.Namespace):
    from eqface.stack.demo import DemoOptions

    return DemoOptions(
        known=args.subjects,
        visitors=args.visitors,
        frames=args.frames,
        degraded_fraction=args.degraded,
        fps=args.fps,
        match_threshold=args.match_threshold,
    )


def _add_stack_options(p: argparse.ArgumentParser, default_state: Path) -> None:
    p.add_argument(
        "--model",
        type=Path,
        help="model.pt, .onnx or a local-variant model repository (default: the BYOR build, see --train-with)",
    )
    p.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="where to look for (and train) a model")
    p.add_argument("--train-preset", default="demo", help="preset to train when no model exists")
    p.add_argument(
        "--train-with",
        choices=("byor", "train", "pipeline"),  # eqface.stack.model.TRAIN_WITH
        default="byor",
        help="byor: the model built once (cached in RUNS/byor-demo/<hash of its inputs>) by import-onnx → byor "
        "step2 → byor export from ../shared/data/weights/mobilefacenet_photo_analyze.onnx and the CelebA pack; "
        "train / pipeline: the newest runs/*/model.pt or runs/kfp-local/model_repository, else `eqface train "
        "--preset TRAIN_PRESET` or the whole Kubeflow pipeline run locally (`eqface pipeline run-local`)",
    )
    p.add_argument("--rebuild", action="store_true", help="byor: build the model again even when cached")
    p.add_argument("--state-dir", type=Path, default=default_state, help="model repository, store, logs, state")
    p.add_argument("--aggregator-port", type=int, default=0, help="aggregator gRPC port (0: a free one)")
    p.add_argument("--prometheus-port", type=int, default=0, help="Prometheus port (0: a free one)")
    p.add_argument("--no-prometheus", action="store_true", help="run without Prometheus even when installed")
    p.add_argument("--scrape-interval", type=float, default=5.0, help="Prometheus scrape/evaluation interval, s")
    p.add_argument("--triton-timeout", type=float, default=30.0, help="the aggregator's deadline per Triton call, s")


def _stack_config(args: argparse.Namespace, fresh: bool):
    from eqface.stack.model import resolve
    from eqface.stack.stack import StackConfig

    served = resolve(args.model, args.runs, args.state_dir, args.train_with, args.train_preset, args.rebuild)
    h, w = served.image_size
    _print(f"model: {served.origin} (input {h}×{w}, embedding {served.embedding_size})")
    return StackConfig(
        state_dir=args.state_dir.resolve(),
        model=served,
        aggregator_port=args.aggregator_port,
        prometheus_port=args.prometheus_port,
        prometheus=not args.no_prometheus,
        scrape_interval_s=args.scrape_interval,
        triton_timeout_s=args.triton_timeout,
        fresh_store=fresh,
    )


def _print(line: str) -> None:
    print(line, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    from eqface.stack.demo import build_subjects, faces_dir
    from eqface.stack.foreground import run_demo as run

    options = _video_options(args)
    config = _stack_config(args, fresh=True)
    # the BYOR model is built from the CelebA pack: real faces or a clear error, never a silent synthetic fallback
    faces = "celeba" if args.train_with == "byor" and args.faces == "auto" else args.faces
    subjects, source = build_subjects(options, faces_dir(faces, config.model.trained_on, out=_print))
    _print(f"video: {len(subjects)} subjects × {options.frames} frames, {source}")
    from eqface.camera.clip import ClipSpec

    clip_dir = None if args.no_clip else args.state_dir / "clip"
    clip_spec = ClipSpec(frames_per_person=args.clip_frames, photo_every=max(1, args.clip_frames // 3))
    return run(config, subjects, options, out=_print, clip_dir=clip_dir, clip_spec=clip_spec)


def run_stream(args: argparse.Namespace) -> int:
    from eqface.stack.daemon import running_state
    from eqface.stack.demo import build_subjects, enroll_and_stream, faces_dir
    from eqface.stack.stack import Endpoints

    state = running_state(args.state_dir)
    endpoints = Endpoints(**state["endpoints"])
    options = _video_options(args)
    data_dir = faces_dir(args.faces, state.get("trained_on", ""), out=_print)
    run_tag = time.strftime("%H%M%S")
    rounds = [build_subjects(options, data_dir, prefix=f"{run_tag}-{r + 1}/") for r in range(args.rounds)]
    _print(f"video: {args.rounds} × {len(rounds[0][0])} subjects × {options.frames} frames, {rounds[0][1]}")
    frames_out = (lambda line: None) if args.quiet else _print
    auth = endpoints.client_auth()
    subjects = [r[0] for r in rounds]
    enroll_and_stream(endpoints.aggregator_grpc, subjects, options, out=_print, frames_out=frames_out, auth=auth)
    return 0


def run_up(args: argparse.Namespace) -> int:
    from eqface.stack import daemon
    from eqface.stack.report import endpoint_lines
    from eqface.stack.stack import Endpoints

    config = _stack_config(args, fresh=False)
    state = daemon.start(config)
    print(f"stack up (supervisor pid {state['supervisor']['pid']}, state {args.state_dir / 'state.json'}):")
    print("\n".join(endpoint_lines(Endpoints(**state["endpoints"]))))
    print(f"stream the demo video into it: eqface stack stream --state-dir {args.state_dir}")
    if config.model.origin.startswith("model repository"):
        print(
            f"deploy a new model version into it: eqface pipeline run-local --repository "
            f"{config.model.repository} --triton-url {state['endpoints']['triton_grpc']}"
        )
    print(f"stop it with: eqface stack down --state-dir {args.state_dir}")
    return 0


def run_down(args: argparse.Namespace) -> int:
    from eqface.stack import daemon

    stopped = daemon.stop(args.state_dir, out=_print)
    print(f"no stack state in {args.state_dir}: nothing to stop" if stopped is None else stopped.describe())
    return 0


def run_status(args: argparse.Namespace) -> int:
    from eqface.stack import daemon
    from eqface.stack.prometheus import PrometheusClient
    from eqface.stack.report import endpoint_lines

    try:
        status = daemon.status(args.state_dir)
    except daemon.StackNotRunning as exc:
        print(exc)
        return 3
    state = status.state
    print(f"stack {state['status']} (supervisor pid {state['supervisor']['pid']}), model {state['model']}")
    print("\n".join(endpoint_lines(status.endpoints)))
    for name, p in status.endpoints.processes.items():
        print(f"  {name:<11} pid {p['pid']} {'running' if status.running[name] else 'GONE'}")
    if status.endpoints.prometheus:
        for t in PrometheusClient(status.endpoints.prometheus).targets():
            print(f"  scrape {t['labels']['job']:<18} {t['health']}  {t.get('lastError', '')}")
    return 0
