"""eqface stack: the whole serving stack on this machine — Triton, the aggregation service, Prometheus.

demo runs it for one streamed demo video and stops; up, down and status keep it running in the background.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
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
        description="Brings up the stack (reusing the newest trained model, else training the demo preset), "
        "enrolls a gallery, streams a video of several subjects with some frames degraded, prints each subject's "
        "quality, QWFA decision and identification as the answers come, then a summary and what Prometheus saw. "
        "Ctrl-C stops everything cleanly at any point.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_stack_options(demo, default_state=DEFAULT_RUNS / "stack-demo")
    _add_video_options(demo)
    demo.set_defaults(func=run_demo)
    stream = stack.add_parser(
        "stream",
        help="stream the demo video into a stack started by `up` (traffic for the dashboards)",
        description="Enrolls the demo gallery and streams the demo video --rounds times into the aggregator of a "
        "running stack (subject ids get a per-run prefix, so the stack's stored state is never replayed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    stream.add_argument("--state-dir", type=Path, default=DEFAULT_RUNS / "stack", help="the folder `up` used")
    stream.add_argument("--rounds", type=int, default=1, help="times to stream the video (new subject ids each)")
    stream.add_argument("--quiet", action="store_true", help="print only the summary")
    _add_video_options(stream)
    stream.set_defaults(func=run_stream)
    up = stack.add_parser(
        "up",
        help="start the stack in the background and print its ports",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_stack_options(up, default_state=DEFAULT_RUNS / "stack")
    up.set_defaults(func=run_up)
    for name, func, text in (
        ("down", run_down, "stop a stack started by `up` (every process it started)"),
        ("status", run_status, "show a stack started by `up`: ports, processes, targets"),
    ):
        q = stack.add_parser(name, help=text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        q.add_argument("--state-dir", type=Path, default=DEFAULT_RUNS / "stack", help="the folder `up` used")
        q.set_defaults(func=func)


def _add_video_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subjects", type=int, default=4, help="enrolled subjects in the video")
    p.add_argument("--visitors", type=int, default=1, help="subjects in the video who are not enrolled")
    p.add_argument("--frames", type=int, default=16, help="frames per subject")
    p.add_argument(
        "--degraded", type=float, default=0.4, help="share of frames degraded (blur, low resolution, noise, occlusion)"
    )
    p.add_argument("--fps", type=float, default=4.0, help="video ticks per second (one frame per subject each)")
    p.add_argument("--match-threshold", type=float, default=0.5, help="cosine below which a match is unknown")
    p.add_argument(
        "--faces",
        choices=("auto", "celeba", "synthetic"),
        default="auto",
        help="auto: real CelebA faces when ../shared/data has them and the model was not trained on "
        "synthetic faces only; synthetic otherwise",
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
        help="model.pt, .onnx or a local-variant model repository (default: the "
        "newest runs/*/model.pt or runs/kfp-local/model_repository, else train --preset demo)",
    )
    p.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="where to look for (and train) a model")
    p.add_argument("--train-preset", default="demo", help="preset to train when no model exists")
    p.add_argument(
        "--train-with",
        choices=("train", "pipeline"),
        default="train",
        help="when no model exists: `eqface train` (fast) or the whole Kubeflow pipeline run locally "
        "(`eqface pipeline run-local`: train, evaluate, export, deploy into runs/kfp-local)",
    )
    p.add_argument("--state-dir", type=Path, default=default_state, help="model repository, store, logs, state")
    p.add_argument("--aggregator-port", type=int, default=0, help="aggregator gRPC port (0: a free one)")
    p.add_argument("--prometheus-port", type=int, default=0, help="Prometheus port (0: a free one)")
    p.add_argument("--no-prometheus", action="store_true", help="run without Prometheus even when installed")
    p.add_argument("--scrape-interval", type=float, default=5.0, help="Prometheus scrape/evaluation interval, s")


def _resolve_model(args: argparse.Namespace):
    from eqface.stack.model import find_existing, prepare, run_local_pipeline, train_demo_model

    model = args.model
    if model is None:
        model = find_existing(args.runs)
    if model is None and args.train_with == "pipeline":
        model = run_local_pipeline(args.runs, args.train_preset)
    elif model is None:
        model = train_demo_model(args.runs / args.train_preset, args.train_preset)
    if not model.exists():
        raise FileNotFoundError(f"model not found: {model}")
    args.state_dir.mkdir(parents=True, exist_ok=True)
    served = prepare(model, args.state_dir)
    h, w = served.image_size
    print(f"model: {served.origin} (input {h}×{w}, embedding {served.embedding_size})", flush=True)
    return served


def _stack_config(args: argparse.Namespace, fresh: bool):
    from eqface.stack.stack import StackConfig

    return StackConfig(
        state_dir=args.state_dir.resolve(),
        model=_resolve_model(args),
        aggregator_port=args.aggregator_port,
        prometheus_port=args.prometheus_port,
        prometheus=not args.no_prometheus,
        scrape_interval_s=args.scrape_interval,
        fresh_store=fresh,
    )


def _print_endpoints(endpoints, out=print) -> None:
    out(f"  aggregator  gRPC {endpoints.aggregator_grpc}   metrics http://{endpoints.aggregator_metrics}/metrics")
    out(
        f"  triton      gRPC {endpoints.triton_grpc}   HTTP http://{endpoints.triton_http}   "
        f"metrics http://{endpoints.triton_metrics}/metrics   (model control: explicit)"
    )
    out(f"  prometheus  {endpoints.prometheus or '(not running: not installed or --no-prometheus)'}")


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


# ------------------------------------------------------------------------------------------------ demo
def run_demo(args: argparse.Namespace) -> int:
    from eqface.stack.demo import build_subjects
    from eqface.stack.stack import LocalStack, write_state

    options = _video_options(args)
    config = _stack_config(args, fresh=True)
    subjects, source = build_subjects(options, _faces_dir(args.faces, config.model.trained_on))
    print(f"video: {len(subjects)} subjects × {options.frames} frames, {source}", flush=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops as cleanly as Ctrl-C
    stack = LocalStack(config)
    try:
        print("starting the stack …", flush=True)
        stack.start()
        write_state(
            config.state_dir, {"status": "demo", "model": config.model.origin, "endpoints": vars(stack.endpoints)}
        )
        print(f"stack ready (logs in {stack.logs_dir}):", flush=True)
        _print_endpoints(stack.endpoints)
        _demo_session(stack, subjects, options)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the stack …", flush=True)
        return 130
    finally:
        _stop_and_check(stack)
        signal.signal(signal.SIGTERM, previous)
    return 0


def _faces_dir(faces: str, trained_on: str) -> Path | None:
    """Where the video's real faces come from, None for synthetic ones. ``auto`` streams real faces unless the model
    was trained on synthetic faces only (real faces are outside its domain: its quality scores them near 0)."""
    if faces == "synthetic":
        return None
    if faces == "auto" and trained_on == "synthetic":
        print(
            "the model was trained on synthetic faces (its run's config.json): streaming synthetic faces; "
            "--faces celeba streams real ones",
            flush=True,
        )
        return None
    return _data_dir(faces)


def _data_dir(faces: str) -> Path | None:
    from eqface.stack.demo import CELEBA_PACK

    candidates = [
        os.environ.get("EQFACE_SHARED_DATA"),
        Path.cwd().parent / "shared" / "data",
        Path(__file__).resolve().parents[3] / "shared" / "data",
    ]
    for c in candidates:
        if c and (Path(c) / CELEBA_PACK).is_file():
            return Path(c)
    if faces == "celeba":
        raise FileNotFoundError(f"--faces celeba: {CELEBA_PACK} not found (set EQFACE_SHARED_DATA)")
    print(f"{CELEBA_PACK} not found (../shared/data or $EQFACE_SHARED_DATA): streaming synthetic faces", flush=True)
    return None


def _demo_session(stack, subjects, options) -> None:
    _enroll_and_stream(stack.endpoints.aggregator_grpc, [subjects], options, _flush_print)
    if stack.endpoints.prometheus:
        _report_prometheus(stack.endpoints.prometheus, stack.config.scrape_interval_s)


def _enroll_and_stream(aggregator: str, rounds: list, options, out) -> None:
    """Enrolls the known subjects, streams each round's subjects, prints the last round's summary."""
    import grpc

    from eqface.service.v1 import aggregator_pb2_grpc
    from eqface.stack.demo import enroll, stream, summary

    with grpc.insecure_channel(aggregator) as channel:
        stub = aggregator_pb2_grpc.AggregatorStub(channel)
        _flush_print("\nenrolling the gallery (images → Triton → QWFAF template):")
        enroll(stub, rounds[0], out=_flush_print)
        for subjects in rounds:
            _flush_print(f"\nstreaming {len(subjects)} subjects at {options.fps:g} ticks/s:")
            stream(stub, subjects, options, out=out)
    _flush_print("\nsummary:")
    summary(rounds[-1], options, out=_flush_print)


def run_stream(args: argparse.Namespace) -> int:
    from eqface.stack.demo import build_subjects
    from eqface.stack.stack import Endpoints, read_state

    state = read_state(args.state_dir)
    if state is None or state.get("status") not in ("ready", "demo"):
        raise RuntimeError(f"no running stack in {args.state_dir} (eqface stack up --state-dir {args.state_dir})")
    endpoints = Endpoints(**state["endpoints"])
    options = _video_options(args)
    data_dir = _faces_dir(args.faces, state.get("trained_on", ""))
    run_tag = time.strftime("%H%M%S")
    rounds = []
    for r in range(args.rounds):
        subjects, source = build_subjects(options, data_dir, prefix=f"{run_tag}-{r + 1}/")
        rounds.append(subjects)
    print(f"video: {args.rounds} × {len(rounds[0])} subjects × {options.frames} frames, {source}", flush=True)
    _enroll_and_stream(
        endpoints.aggregator_grpc, rounds, options, out=(lambda line: None) if args.quiet else _flush_print
    )
    return 0


def _flush_print(line: str) -> None:
    print(line, flush=True)


def _report_prometheus(url: str, scrape_interval_s: float) -> None:
    from eqface.stack.monitoring import AGGREGATOR_JOB
    from eqface.stack.prometheus import PrometheusClient

    client = PrometheusClient(url)
    # Wait for a scrape of the aggregator that began after the last frame (Prometheus applies new targets after up
    # to 5 s, then scrapes every interval), and one rule evaluation after it.
    stream_end, deadline = time.time(), time.monotonic() + 30 + 3 * scrape_interval_s
    while time.monotonic() < deadline:
        if client.scalar(f'max(timestamp(up{{job="{AGGREGATOR_JOB}"}}))', default=0.0) > stream_end:
            break
        time.sleep(0.5)
    time.sleep(scrape_interval_s)
    print(f"\nPrometheus ({url}) saw:", flush=True)
    frames = sorted(
        client.query("sum by (result) (eqface_aggregator_frames_total)"), key=lambda r: r["metric"]["result"]
    )
    print("  frames by result   " + ", ".join(f"{r['metric']['result']} {float(r['value'][1]):.0f}" for r in frames))
    median = client.scalar("histogram_quantile(0.5, sum by (le) (eqface_aggregator_frame_quality_bucket))")
    print(f"  median quality     {median:.2f} (from the frame-quality histogram)")
    batch = sorted(
        client.query("sum by (model) (nv_inference_count) / sum by (model) (nv_inference_exec_count)"),
        key=lambda r: r["metric"]["model"],
    )
    print("  Triton avg batch   " + ", ".join(f"{r['metric']['model']} {float(r['value'][1]):.1f}" for r in batch))
    p99 = client.query("histogram_quantile(0.99, sum by (stage, le) (eqface_aggregator_stage_duration_seconds_bucket))")
    print(
        "  stage p99          "
        + ", ".join(
            f"{r['metric']['stage']} {1000 * float(r['value'][1]):.1f} ms"
            for r in p99
            if math.isfinite(float(r["value"][1]))
        )
    )
    firing = [a["labels"]["alertname"] for a in client.alerts() if a["state"] == "firing"]
    print(f"  alerts firing      {', '.join(firing) or 'none'}", flush=True)


def _stop_and_check(stack) -> None:
    from eqface.processes import same_process

    codes = stack.stop()
    left = [name for name, p in stack.endpoints.processes.items() if same_process(p["pid"], p["start_ticks"])]
    parts = ", ".join(f"{name} (exit {code})" for name, code in codes.items())
    print(
        f"stopped: {parts or 'nothing was running'}; "
        f"{'still running: ' + ', '.join(left) if left else 'no child process left'}",
        flush=True,
    )


# ------------------------------------------------------------------------------------------------ up / down
def run_up(args: argparse.Namespace) -> int:
    from eqface.stack.stack import read_state
    from eqface.stack.supervisor import CONFIG_FILE

    state = read_state(args.state_dir)
    if state and _supervisor_alive(state):
        raise RuntimeError(
            f"a stack is already running from {args.state_dir} (pid {state['supervisor']['pid']}); "
            f"`eqface stack down --state-dir {args.state_dir}` first"
        )
    config = _stack_config(args, fresh=False)
    (args.state_dir / CONFIG_FILE).write_text(json.dumps(config.to_json(), indent=2))
    (args.state_dir / "state.json").unlink(missing_ok=True)
    log = args.state_dir / "logs" / "supervisor.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # detached: its own session, outlives this command
        process = subprocess.Popen(
            [sys.executable, "-m", "eqface.stack.supervisor", str(config.state_dir)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    try:
        state = _wait_started(args.state_dir, process, log, config.startup_timeout_s + 30)
    except BaseException:  # Ctrl-C or a failed start: leave nothing running behind the user's back
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(120)
        raise
    from eqface.stack.stack import Endpoints

    print(f"stack up (supervisor pid {process.pid}, state {args.state_dir / 'state.json'}):")
    _print_endpoints(Endpoints(**state["endpoints"]))
    print(f"stream the demo video into it: eqface stack stream --state-dir {args.state_dir}")
    if config.model.origin.startswith("model repository"):
        print(
            f"deploy a new model version into it: eqface pipeline run-local --repository "
            f"{config.model.repository} --triton-url {state['endpoints']['triton_grpc']}"
        )
    print(f"stop it with: eqface stack down --state-dir {args.state_dir}")
    return 0


def _wait_started(state_dir: Path, process: subprocess.Popen, log: Path, timeout_s: float) -> dict:
    from eqface.stack.stack import read_state

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = read_state(state_dir) or {}
        if state.get("status") == "ready":
            return state
        if state.get("status") == "failed" or process.poll() is not None:
            process.wait(60)
            raise RuntimeError(
                f"the stack did not start: {state.get('error', 'supervisor exited')}; "
                f"{log} ends:\n{log.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.2)
    raise RuntimeError(f"the stack was not ready after {timeout_s:.0f}s; see {log}")


def _supervisor_alive(state: dict) -> bool:
    from eqface.processes import same_process

    s = state.get("supervisor", {})
    return bool(s) and same_process(s["pid"], s["start_ticks"])


def run_down(args: argparse.Namespace) -> int:
    from eqface.processes import kill_recorded, same_process
    from eqface.stack.stack import read_state

    state = read_state(args.state_dir)
    if state is None:
        print(f"no stack state in {args.state_dir}: nothing to stop")
        return 0
    sup = state["supervisor"]
    if _supervisor_alive(state):
        print(f"stopping the stack (supervisor pid {sup['pid']}) …", flush=True)
        os.kill(sup["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and same_process(sup["pid"], sup["start_ticks"]):
            time.sleep(0.2)
    # Whatever the supervisor left (it was killed -9, say): the recorded processes, by pid and start time.
    processes = {"supervisor": sup, **state.get("endpoints", {}).get("processes", {})}
    leftovers = [name for name, p in processes.items() if same_process(p["pid"], p["start_ticks"])]
    for name in leftovers:
        kill_recorded(processes[name]["pid"], processes[name]["start_ticks"])
    final = read_state(args.state_dir) or state
    codes = final.get("exit_codes", {})
    print(
        f"stack stopped: {', '.join(f'{k} (exit {v})' for k, v in codes.items()) or 'processes ended'}"
        f"{'; killed leftovers: ' + ', '.join(leftovers) if leftovers else ''}; no process left"
    )
    return 0


def run_status(args: argparse.Namespace) -> int:
    from eqface.processes import same_process
    from eqface.stack.stack import Endpoints, read_state

    state = read_state(args.state_dir)
    if state is None or not _supervisor_alive(state):
        print(f"no stack running from {args.state_dir}" + (f" (last status: {state['status']})" if state else ""))
        return 3
    print(f"stack {state['status']} (supervisor pid {state['supervisor']['pid']}), model {state['model']}")
    endpoints = Endpoints(**state.get("endpoints", {}))
    _print_endpoints(endpoints)
    for name, p in endpoints.processes.items():
        print(f"  {name:<11} pid {p['pid']} {'running' if same_process(p['pid'], p['start_ticks']) else 'GONE'}")
    if endpoints.prometheus:
        from eqface.stack.prometheus import PrometheusClient

        for t in PrometheusClient(endpoints.prometheus).targets():
            print(f"  scrape {t['labels']['job']:<18} {t['health']}  {t.get('lastError', '')}")
    return 0
