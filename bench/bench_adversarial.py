"""Adversarial benchmark of the aggregation service (not a test; loopback only, bounded): misbehaving clients
against the current code and against an earlier commit, side by side in one run. Prints its figures.

Phases, each run against a fresh server of each code version (``python -m eqface.service`` from this checkout,
and from ``git archive <--before-ref>`` unpacked in a temporary directory):
  memory   --hogs streams send messages of --hog-frames 512-d feature frames as fast as the server reads them and
           never read an answer, for --hog-seconds; the server's peak RSS (VmRSS, sampled every 0.1 s) minus its
           RSS before. A phase stops early once RSS passes --rss-cap-mib (reported as "> cap").
  storm    --storm-streams streams on --storm-connections connections start together; each sends --storm-messages
           messages of --storm-frames frames with --storm-window in flight. Time from the stream's start to its first
           answer: p50 / p99 / max, and the whole storm's duration.

  python bench/bench_adversarial.py                       # current code vs fb153cb (before issue 16's quotas)
  python bench/bench_adversarial.py --before-ref HEAD~3 --json adversarial.json

The store is SQLite with synchronous=normal (fsync per checkpoint, not per commit) so the figures measure the
service, not the disk. Load average is printed before and after: compare the two code versions within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from eqface import processes
from eqface.processes import free_port, wait_for_grpc_health
from eqface.service.client import feature_frame
from eqface.service.v1 import aggregator_pb2 as pb

METHOD = "/eqface.service.v1.AggregatorService/StreamFrames"
ROOT = Path(__file__).resolve().parents[1]
_CHANNEL = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


class Server:
    """The aggregation server of one code version (``source``: a directory holding the ``eqface`` package)."""

    def __init__(self, source: Path, workdir: Path, name: str, extra: list[str] | None = None) -> None:
        self.port = free_port()
        db = workdir / f"{name}-{self.port}.db"
        argv = [sys.executable, "-m", "eqface.service", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--metrics-port", "0", "--store", f"sqlite:///{db}?synchronous=normal", "--log-level", "WARNING"]
        argv += extra or []
        env = dict(os.environ, PYTHONPATH=str(source))
        log = workdir / f"{name}-{self.port}.log"
        # cwd: ``python -m`` puts it first on sys.path, ahead of PYTHONPATH
        self.child = processes.start(name, argv, log, env=env, cwd=source, die_with_parent=False)
        try:
            wait_for_grpc_health(self.target, self.child, 60)
        except BaseException:
            self.child.stop(grace_s=5)
            raise

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.child.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.child.stop(grace_s=10)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def payloads(stream: int, messages: int, frames: int, dim: int = 512) -> list[bytes]:
    """Serialised messages of one stream: ``frames`` frames of one subject each, sequences increasing."""
    rng = np.random.default_rng(stream)
    pool = _unit(_unit(rng.normal(size=dim)) + 0.05 * rng.normal(size=(64, dim)))
    out, seq = [], 0
    for _ in range(messages):
        batch = []
        for _ in range(frames):
            seq += 1
            batch.append(feature_frame(f"storm{stream}", seq, pool[seq % 64], 0.8))
        out.append(pb.StreamFramesRequest(frames=batch).SerializeToString())
    return out


# ---------------------------------------------------------------------------------------------------------- memory
async def memory_phase(server: Server, hogs: int, frames: int, seconds: float, cap_mib: float) -> dict:
    """Streams that write and never read: the server's peak RSS growth."""
    import grpc

    message = payloads(10_000, 1, frames)[0]
    base = server.rss_mib()
    peak, capped, written = base, False, 0
    channels = [grpc.aio.insecure_channel(server.target, options=_CHANNEL) for _ in range(hogs)]
    calls = [c.stream_stream(METHOD, request_serializer=None, response_deserializer=None)() for c in channels]

    async def hog(call) -> None:
        nonlocal written
        while True:
            await call.write(message)
            written += 1

    tasks = [asyncio.ensure_future(hog(call)) for call in calls]
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            peak = max(peak, server.rss_mib())
            if peak > cap_mib:
                capped = True
                break
    finally:
        for task in tasks:
            task.cancel()
        for call in calls:
            call.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in channels:
            await c.close()
    return {
        "hogs": hogs,
        "rss_before_mib": round(base, 1),
        "rss_peak_mib": round(peak, 1),
        "rss_growth_mib": round(peak - base, 1),
        "capped": capped,
        "messages_written": written,
        "mib_written": round(written * len(message) / 2**20, 1),
    }


# ----------------------------------------------------------------------------------------------------------- storm
async def storm_phase(server: Server, streams: int, connections: int, messages: int, frames: int, window: int) -> dict:
    """Streams that start together: time from each stream's start to its first answer."""
    import grpc

    data = [payloads(s, messages, frames) for s in range(streams)]
    channels = [grpc.aio.insecure_channel(server.target, options=_CHANNEL) for _ in range(connections)]
    for c in channels:
        await c.channel_ready()
    first: list[float] = []
    codes: dict[str, int] = {}
    start = asyncio.Event()

    async def one(s: int) -> None:
        await start.wait()
        began = time.perf_counter()
        call = channels[s % connections].stream_stream(METHOD, request_serializer=None, response_deserializer=None)()
        slots = asyncio.Semaphore(window)

        async def writer() -> None:
            for message in data[s]:
                await slots.acquire()
                await call.write(message)
            await call.done_writing()

        task = asyncio.ensure_future(writer())
        try:
            for i in range(messages):
                await call.read()
                if i == 0:
                    first.append(time.perf_counter() - began)
                slots.release()
            await task
            codes["OK"] = codes.get("OK", 0) + 1
        except grpc.aio.AioRpcError as exc:
            task.cancel()
            key = f"{exc.code().name}: {exc.details()[:80]}"
            codes[key] = codes.get(key, 0) + 1

    tasks = [asyncio.ensure_future(one(s)) for s in range(streams)]
    await asyncio.sleep(0.2)
    began = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    duration = time.perf_counter() - began
    for c in channels:
        await c.close()
    ms = np.sort(np.asarray(first)) * 1000 if first else np.zeros(1)
    return {
        "streams": streams,
        "connections": connections,
        "frames": streams * messages * frames,
        "first_ack_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "first_ack_p99_ms": round(float(np.percentile(ms, 99)), 1),
        "first_ack_max_ms": round(float(ms.max()), 1),
        "storm_seconds": round(duration, 2),
        "codes": codes,
    }


# ------------------------------------------------------------------------------------------------------------ main
def export(ref: str, into: Path) -> Path:
    """The ``eqface`` package of ``ref``, unpacked under ``into`` (no git worktree: nothing in .git changes)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "eqface"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def run_version(name: str, source: Path, workdir: Path, args: argparse.Namespace) -> dict:
    result: dict = {}
    # both versions serve plaintext on loopback: this one needs --insecure said explicitly, the older one has no flag
    extra = ["--insecure"] if source == ROOT else None
    server = Server(source, workdir, name, extra)
    try:
        result["memory"] = asyncio.run(
            memory_phase(server, args.hogs, args.hog_frames, args.hog_seconds, args.rss_cap_mib)
        )
    finally:
        server.stop()
    server = Server(source, workdir, name, extra)
    try:
        result["storm"] = asyncio.run(
            storm_phase(
                server,
                args.storm_streams,
                args.storm_connections,
                args.storm_messages,
                args.storm_frames,
                args.storm_window,
            )
        )
    finally:
        server.stop()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before-ref", default="fb153cb", help="git ref of the code to compare against (%(default)s)")
    p.add_argument("--hogs", type=int, default=20, help="non-reading streams (%(default)s)")
    p.add_argument("--hog-frames", type=int, default=1024, help="frames per message of a hog (%(default)s)")
    p.add_argument("--hog-seconds", type=float, default=8.0, help="how long the hogs write (%(default)s)")
    p.add_argument("--rss-cap-mib", type=float, default=3000.0, help="stop a memory phase above this RSS")
    p.add_argument("--storm-streams", type=int, default=200)
    p.add_argument("--storm-connections", type=int, default=8)
    p.add_argument("--storm-messages", type=int, default=8)
    p.add_argument("--storm-frames", type=int, default=128)
    p.add_argument("--storm-window", type=int, default=8, help="messages in flight per stream (%(default)s)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()

    json_path: Path | None = args.json
    report: dict = {"load_average_before": os.getloadavg(), "before_ref": args.before_ref, "args": vars(args)}
    report["args"]["json"] = str(json_path) if json_path else None
    with tempfile.TemporaryDirectory(prefix="eqface-adversarial-") as tmp:
        workdir = Path(tmp)
        before = export(args.before_ref, Path(tempfile.mkdtemp(dir=tmp, prefix="before-")))
        for name, source in (("current", ROOT), ("before", before)):
            report[name] = run_version(name, source, workdir, args)
            print(name, json.dumps(report[name]), flush=True)
    report["load_average_after"] = os.getloadavg()
    print(f"load average before {report['load_average_before']}, after {report['load_average_after']}")
    header = f"{'':10} {'hog RSS growth MiB':>19} {'first ack p50 ms':>17} {'p99 ms':>9} {'max ms':>9} {'storm s':>8}"
    print(header)
    for name in ("before", "current"):
        m, s = report[name]["memory"], report[name]["storm"]
        growth = f"{'>' if m['capped'] else ''}{m['rss_growth_mib']:.0f}"
        p50, p99, mx = s["first_ack_p50_ms"], s["first_ack_p99_ms"], s["first_ack_max_ms"]
        print(f"{name:10} {growth:>19} {p50:>17.0f} {p99:>9.0f} {mx:>9.0f} {s['storm_seconds']:>8.1f}")
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
