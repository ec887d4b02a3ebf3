"""Benchmark of the camera client (not a test): today's path (``--pipeline full``: the whole MTCNN cascade on every
frame) and the realtime path (``--pipeline realtime``: the cascade on every k-th frame, ONet alone following the faces
in between) side by side on the same clip, through one real stack (Triton serving the model + the aggregator in
image mode). Prints its figures; ``--json`` writes them.

The clip is the demo's (``eqface.stack.clip_demo``): held-out CelebA identities of the pack crossing a 640×360 scene,
stretches degraded by the held-out families; the known people are enrolled first, the last one is a visitor. Each
pipeline streams the clip ``--repeats`` times, in turn (full, realtime, full, realtime, …), under its own subject
prefix. Per pipeline:

  fps            frames read ÷ wall time of ``StreamSession.run`` (a file is read frame by frame as fast as the client
                 goes: decode → detect → align → track → uplink → aggregator → Triton, every answer back)
  cpu ms/frame   CPU seconds per frame of each process, from /proc: the camera (this process: decode, detection,
                 alignment, JPEG, gRPC client), the aggregator, Triton (with its python-backend stubs)
  cpu fps        2 cores ÷ (total CPU seconds per frame): the frame rate the work allows on two otherwise idle cores —
                 the figure to compare on a machine that other jobs load
  loop           CPU ms per frame of the camera's main thread (decode hand-off, detection, alignment, tracking, JPEG):
                 serial work, so 1000 ÷ loop bounds the frame rate however many cores there are
  accuracy       each track's final identification against the clip's truth (enrolled: its identity at cosine ≥
                 --threshold; the visitor: no match ≥ it), people identified right / people

``--profile N`` adds one untimed cProfile run of the camera per pipeline (CPU time of its main thread) and prints its
top N entries. ``idle_ms_per_s`` is what the aggregator and Triton burn per second with no frame to serve (measured
before the runs; it is inside their per-frame figures).

    .venv/bin/python bench/bench_camera.py --model runs/mfn-final/model.pt --json runs/bench_camera.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from eqface import paths
from eqface.camera.clip import ClipSpec
from eqface.camera.keyframes import KeyframeConfig
from eqface.camera.session import PIPELINES, StreamOptions, StreamSession
from eqface.stack.clip_demo import make_clip, score_tracks
from eqface.stack.demo import DemoOptions, build_subjects, enroll
from eqface.stack.model import prepare
from eqface.stack.stack import LocalStack, StackConfig

TICK = os.sysconf("SC_CLK_TCK")


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and every living descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
        todo += children.get(p, [])
    return total


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_once(clip, subjects, aggregator: str, pids: dict[str, int], options: StreamOptions) -> dict:
    lines: list[str] = []
    before = {"camera": self_cpu_s(), **{name: process_tree_cpu_s(pid) for name, pid in pids.items()}}
    loop = time.thread_time()
    summary = StreamSession(str(clip.path), options, out=lines.append).run()
    loop = time.thread_time() - loop
    after = {"camera": self_cpu_s(), **{name: process_tree_cpu_s(pid) for name, pid in pids.items()}}
    frames = summary["frames_read"]
    cpu = {name: (after[name] - before[name]) / frames * 1e3 for name in before}
    verdicts = score_tracks(summary, clip, subjects, options.match_threshold)
    people = {a.identity for a in clip.appearances}
    return {
        "fps": frames / summary["wall_s"],
        "cpu_ms_per_frame": cpu,
        "loop_ms_per_frame": loop / frames * 1e3,
        "frames": frames,
        "faces": summary["faces_detected"],
        "keyframes": summary["keyframes"],
        "dropped": summary["uplink"]["dropped"],
        "people_right": len({v.truth for v in verdicts if v.correct} & people),
        "people": len(people),
        "tracks_right": sum(v.correct for v in verdicts),
        "tracks": len(verdicts),
        "verdicts": {v.truth: v.identified for v in verdicts},
    }


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    before = {name: process_tree_cpu_s(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {name: (process_tree_cpu_s(pid) - before[name]) / seconds * 1e3 for name, pid in pids.items()}


def profile_once(clip, options: StreamOptions, top: int) -> list[str]:
    profiler = cProfile.Profile(time.thread_time)  # CPU seconds of the camera's loop, not wall time on a busy machine
    profiler.enable()
    StreamSession(str(clip.path), options, out=lambda line: None).run()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return [line for line in text.getvalue().splitlines() if line.strip()][-top - 1 :]


def summarise(runs: list[dict]) -> dict:
    frames = sum(r["frames"] for r in runs)
    cpu = {k: sum(r["cpu_ms_per_frame"][k] * r["frames"] for r in runs) / frames for k in runs[0]["cpu_ms_per_frame"]}
    total = sum(cpu.values())
    loop = sum(r["loop_ms_per_frame"] * r["frames"] for r in runs) / frames
    return {
        "loop_ms_per_frame": loop,
        "loop_fps": 1000.0 / loop,
        "fps": frames / sum(r["frames"] / r["fps"] for r in runs),
        "cpu_ms_per_frame": {**cpu, "total": total},
        "cpu_fps_2_cores": 2000.0 / total,
        "camera_cpu_fps": 1000.0 / cpu["camera"],
        "people_right": min(r["people_right"] for r in runs),
        "people": runs[0]["people"],
        "tracks_right": min(r["tracks_right"] for r in runs),
        "tracks": max(r["tracks"] for r in runs),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("runs/mfn-final/model.pt"), help="model.pt, .onnx or repo")
    p.add_argument("--state-dir", type=Path, help="the stack's folder (default: a temporary one)")
    p.add_argument("--people", type=int, default=5, help="people crossing the scene (the last one a visitor)")
    p.add_argument("--clip-frames", type=int, default=30, help="frames per person")
    p.add_argument("--repeats", type=int, default=2, help="streams of the clip per pipeline")
    p.add_argument("--detect-every", type=int, default=KeyframeConfig().detect_every, help="realtime: key frames")
    p.add_argument("--threshold", type=float, default=0.5, help="cosine at or above which a match is an identity")
    p.add_argument("--profile", type=int, default=0, help="print the camera's top N cProfile entries per pipeline")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)

    subjects, source = build_subjects(
        DemoOptions(known=args.people - 1, visitors=1, match_threshold=args.threshold), paths.shared_data_dir()
    )
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="bench-camera-"))
    spec = ClipSpec(frames_per_person=args.clip_frames, photo_every=max(1, args.clip_frames // 3))
    clip = make_clip(subjects, state_dir / "clip", spec)
    print(f"clip: {clip.path} ({clip.frames} frames, 640×360, {len(clip.appearances)} people; {source})", flush=True)
    config = StackConfig(state_dir=state_dir, model=prepare(args.model, state_dir), prometheus=False, fresh_store=True)
    results: dict = {"load_average_before": os.getloadavg(), "clip_frames": clip.frames, "model": str(args.model)}
    with LocalStack(config) as stack:
        from eqface.service.client import AggregatorClient

        aggregator, auth = stack.endpoints.aggregator_grpc, stack.endpoints.client_auth()  # the stack's mutual TLS
        pids = {name: stack.endpoints.processes[name]["pid"] for name in ("aggregator", "triton")}
        with AggregatorClient(aggregator, auth=auth) as client:
            enroll(client, subjects, out=lambda line: None)
        base = StreamOptions(
            server=aggregator,
            auth=auth,
            out_dir=state_dir / "stream",
            subject_prefix="",
            match_threshold=args.threshold,
            video_out=False,
            keyframes=KeyframeConfig(detect_every=args.detect_every),
        )
        run_once(clip, subjects, aggregator, pids, replace(base, subject_prefix="warmup/", max_frames=20))
        results["idle_ms_per_s"] = idle_cpu(pids, seconds=3.0)
        runs: dict[str, list[dict]] = {name: [] for name in PIPELINES[::-1]}  # today's path first
        for r in range(args.repeats):
            for name in runs:
                options = replace(base, pipeline=name, subject_prefix=f"{name}-{r}/", out_dir=state_dir / name)
                runs[name].append(run_once(clip, subjects, aggregator, pids, options))
                print(f"  {name} #{r + 1}: {runs[name][-1]['fps']:.1f} frames/s", flush=True)
        results["pipelines"] = {name: summarise(rs) for name, rs in runs.items()}
        if args.profile:
            for name in runs:
                options = replace(base, pipeline=name, subject_prefix=f"profile-{name}/", out_dir=state_dir / name)
                results["pipelines"][name]["profile"] = profile_once(clip, options, args.profile)
    results["load_average_after"] = os.getloadavg()
    report(results, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def report(results: dict, args: argparse.Namespace) -> None:
    full, fast = results["pipelines"]["full"], results["pipelines"]["realtime"]
    print(
        f"\n{'pipeline':<10} {'fps':>6} {'camera':>7} {'aggreg.':>7} {'triton':>7} {'total':>7}  {'cpu fps':>7} "
        f"{'loop':>6} {'people right':>12} {'tracks right':>12}   (cpu ms/frame; cpu fps = 2 cores ÷ total)"
    )
    for name, s in results["pipelines"].items():
        c = s["cpu_ms_per_frame"]
        print(
            f"{name:<10} {s['fps']:>6.1f} {c['camera']:>7.1f} {c['aggregator']:>7.1f} {c['triton']:>7.1f} "
            f"{c['total']:>7.1f}  {s['cpu_fps_2_cores']:>7.1f} {s['loop_ms_per_frame']:>6.1f} "
            f"{s['people_right']:>7}/{s['people']:<4} {s['tracks_right']:>7}/{s['tracks']:<4}"
        )
    results["ratios"] = {
        "fps": fast["fps"] / full["fps"],
        "cpu_fps": fast["cpu_fps_2_cores"] / full["cpu_fps_2_cores"],
        "camera_cpu": fast["cpu_ms_per_frame"]["camera"] / full["cpu_ms_per_frame"]["camera"],
    }
    r = results["ratios"]
    print(
        f"realtime ÷ full: fps × {r['fps']:.2f}, cpu fps × {r['cpu_fps']:.2f}, camera CPU per frame × "
        f"{r['camera_cpu']:.2f}; realtime key frames: {fast['runs'][0]['keyframes']}; load average before "
        f"{results['load_average_before'][0]:.2f}, after {results['load_average_after'][0]:.2f}; idle CPU ms/s "
        f"{ {k: round(v, 1) for k, v in results['idle_ms_per_s'].items()} }"
    )
    for name, s in results["pipelines"].items():
        if "profile" in s:
            print(f"\ncamera profile, {name} (top {args.profile} by own time):")
            print("\n".join(s["profile"]))


if __name__ == "__main__":
    raise SystemExit(main())
