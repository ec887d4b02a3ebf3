"""Benchmark of the aggregation service (not a test): feature-mode throughput on one core, update latency, bytes per
subject in each store, and image-mode frames/s end to end through Triton when it is available. Prints its figures.

Phases:
  throughput   the server (``python -m eqface.service``) pinned to --server-core with os.sched_setaffinity before
               it starts any thread; --streams concurrent StreamFrames calls from this process (pinned to
               --client-core) send pre-serialised messages of --frames-per-message feature frames (embeddings as raw
               float32 bytes, --subjects-per-message subjects per message), --window messages in flight per stream.
               Reported: frames/s over the whole run and the per-message round trip p50/p99 under that load (read,
               validate, QWFA update, durable group commit, answer).
  latency      one stream, one frame per message, lock-step: the round trip of a single durable update p50/p99/p999;
               and at a steady --paced-rate (16 streams sending --paced-frames-per-message frames on a fixed schedule,
               open loop).
  bytes        --subjects realistic subject records written through the store API: the record size and what the
               backend uses per subject (SQLite file pages in use; Redis used_memory growth).
  tls          the throughput phase on SQLite with mutual TLS (a local CA, client certificate) and without
               (``--insecure``), alternated --tls-rounds times on fresh stores in one run: frames/s and frames per
               server CPU-second of each, and their ratio TLS / plaintext.
  image        (when nvidia-pytriton, ../shared/data and its weights are present) Triton on the local repository
               with pretrained MobileFaceNet; JPEG frames of real faces streamed through the aggregator (bytes mode:
               the ensemble decodes) by --image-streams streams; frames/s end to end, next to Triton alone.

Targets (issue): >= 20k frames/s on one core with batched messages, p99 update latency < 2 ms.

  python bench/bench_service.py                          # sqlite (synchronous=full) and redis if installed
  python bench/bench_service.py --stores sqlite sqlite-normal --frames 400000 --json bench_service.json
  python bench/bench_service.py --stores sqlite --frames 40000 --no-image --tls-frames 40000   # TLS ratio, small
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from eqface import paths, processes
from eqface.processes import free_port, wait_for_grpc_health
from eqface.service.caller import DEFAULT_TENANT, Role
from eqface.service.client import feature_frame, image_frame
from eqface.service.security.pki import LocalCA
from eqface.service.security.tls import channel_credentials
from eqface.service.v1 import aggregator_pb2 as pb
from eqface.serving.helper_process import TritonHelper

METHOD = "/eqface.service.v1.AggregatorService/StreamFrames"
_PIN_AND_RUN = (
    "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); "
    "from eqface.service.cli import main; raise SystemExit(main(sys.argv[2:]))"
)
_CHANNEL = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


# --------------------------------------------------------------------------------------------------------- server
class PinnedServer:
    """The aggregation server as a child process pinned to one core: ``--insecure`` (plaintext), or with ``tls`` mutual
    TLS with that CA's certificates (readiness then waited for on its plaintext health port)."""

    def __init__(
        self, core: int, store: str, workdir: Path, extra: list[str] | None = None, tls: BenchPKI | None = None
    ) -> None:
        self.port = free_port()
        self.log = workdir / f"server-{self.port}.log"
        args = ["--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", "0", "--store", store]
        args += ["--log-level", "WARNING", *(extra or [])]
        health = free_port() if tls is not None else self.port
        args += ["--insecure"] if tls is None else [*tls.server_args, f"--health-port={health}"]
        self.credentials = tls.client_credentials if tls is not None else None
        argv = [sys.executable, "-c", _PIN_AND_RUN, str(core), *args]
        # no die_with_parent: this process holds gRPC channels, and a preexec_fn forces fork() (gRPC fork handlers)
        self.child = processes.start("aggregator", argv, self.log, die_with_parent=False)
        try:
            wait_for_grpc_health(f"127.0.0.1:{health}", self.child, 60)
        except BaseException:
            self.child.stop(grace_s=10)
            raise

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        fields = Path(f"/proc/{self.child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.child.stop(grace_s=30)


# ------------------------------------------------------------------------------------------------------ payloads
def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def feature_payloads(
    stream: int, messages: int, frames_per_message: int, subjects_per_message: int, dim: int
) -> list[bytes]:
    """Serialised StreamFramesRequests: each subject's frames scatter around one identity, qualities uniform."""
    rng = np.random.default_rng(stream)
    subjects = [f"s{stream}-{k}" for k in range(subjects_per_message)]
    pools = {s: _unit(_unit(rng.normal(size=dim)) + 0.05 * rng.normal(size=(256, dim))) for s in subjects}
    qualities = rng.uniform(0, 1, size=256).astype(np.float32)
    per_subject = frames_per_message // subjects_per_message
    seq = dict.fromkeys(subjects, 0)
    out = []
    for _ in range(messages):
        frames = []
        for s in subjects:
            for _ in range(per_subject):
                seq[s] += 1
                i = seq[s] % 256
                frames.append(feature_frame(s, seq[s], pools[s][i], float(qualities[i])))
        out.append(pb.StreamFramesRequest(frames=frames).SerializeToString())
    return out


class BenchPKI:
    """A local CA, the server's certificate and one client certificate (the default tenant, as the plaintext arm,
    so the two arms differ only in TLS; every role)."""

    def __init__(self, directory: Path) -> None:
        ca = LocalCA(directory)
        server, client = ca.server(), ca.client("bench", DEFAULT_TENANT, Role)
        self.server_args = [f"--tls-cert={server.cert}", f"--tls-key={server.key}", f"--tls-client-ca={ca.cert_file}"]
        self.client_credentials = channel_credentials(ca.cert_file, client.cert, client.key)


# --------------------------------------------------------------------------------------------------------- clients
async def run_streams(
    target: str, payloads: list[list[bytes]], window: int, frames_per_message: int, credentials=None
) -> dict:
    """Streams pre-serialised messages with ``window`` in flight per stream; round trip per message, status counts."""
    import grpc

    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    frames = 0

    async def one(channel: grpc.aio.Channel, messages: list[bytes]) -> None:
        nonlocal frames
        call = channel.stream_stream(METHOD, request_serializer=None, response_deserializer=None)()
        slots = asyncio.Semaphore(window)
        sent: list[float] = []

        async def writer() -> None:
            for message in messages:
                await slots.acquire()
                sent.append(time.perf_counter())
                await call.write(message)
            await call.done_writing()

        task = asyncio.get_running_loop().create_task(writer())
        for i in range(len(messages)):
            raw = await call.read()
            latencies.append(time.perf_counter() - sent[i])
            slots.release()
            if i % 16 == 0:  # a sample is enough to see that frames were applied, not answered as duplicates
                response = pb.StreamFramesResponse.FromString(raw)
                statuses.update(r.status for r in response.results)
            frames += frames_per_message
        await task

    if credentials is None:
        channels = [grpc.aio.insecure_channel(target, options=_CHANNEL) for _ in payloads]
    else:
        channels = [grpc.aio.secure_channel(target, credentials, options=_CHANNEL) for _ in payloads]
    try:
        started = time.perf_counter()
        await asyncio.gather(*(one(c, m) for c, m in zip(channels, payloads)))
        elapsed = time.perf_counter() - started
    finally:
        for c in channels:
            await c.close()
    return {"frames": frames, "seconds": elapsed, "latencies": latencies, "statuses": statuses}


async def run_paced(target: str, payloads: list[list[bytes]], messages_per_s_per_stream: float) -> list[float]:
    """Open loop: each stream sends its messages on a fixed schedule, whatever the answers; round trip per message."""
    import grpc

    latencies: list[float] = []
    interval = 1.0 / messages_per_s_per_stream

    async def one(channel: grpc.aio.Channel, messages: list[bytes], offset: float) -> None:
        call = channel.stream_stream(METHOD, request_serializer=None, response_deserializer=None)()
        sent: list[float] = []

        async def writer() -> None:
            start = time.perf_counter() + offset
            for i, message in enumerate(messages):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent.append(time.perf_counter())
                await call.write(message)
            await call.done_writing()

        task = asyncio.get_running_loop().create_task(writer())
        for i in range(len(messages)):
            await call.read()
            latencies.append(time.perf_counter() - sent[i])
        await task

    channels = [grpc.aio.insecure_channel(target, options=_CHANNEL) for _ in payloads]
    try:
        offsets = [interval * k / len(payloads) for k in range(len(payloads))]  # spread the streams' sends
        await asyncio.gather(*(one(c, m, o) for c, m, o in zip(channels, payloads, offsets)))
    finally:
        for c in channels:
            await c.close()
    return latencies


def _percentiles(values: list[float], *qs: float) -> dict[str, float]:
    ordered = np.sort(np.asarray(values)) * 1000
    return {f"p{q:g}_ms": float(np.percentile(ordered, q)) for q in qs}


def throughput(args: argparse.Namespace, store: str, workdir: Path) -> dict:
    per_stream = args.frames // args.streams // args.frames_per_message
    payloads = [
        feature_payloads(s, per_stream, args.frames_per_message, args.subjects_per_message, args.dim)
        for s in range(args.streams)
    ]
    server = PinnedServer(args.server_core, store, workdir, ["--embedding-dim", str(args.dim)])
    try:
        warm = [
            feature_payloads(100 + s, 20, args.frames_per_message, args.subjects_per_message, args.dim)
            for s in range(args.streams)
        ]
        per_message = args.frames_per_message // args.subjects_per_message * args.subjects_per_message
        asyncio.run(run_streams(server.target, warm, args.window, per_message))
        cpu_before = server.cpu_seconds()
        result = asyncio.run(run_streams(server.target, payloads, args.window, per_message))
        cpu = server.cpu_seconds() - cpu_before
        latency = lockstep_latency(server.target, args.latency_frames, args.dim)
        paced = _paced(args, server.target)
    finally:
        server.stop()
    applied = sum(n for s, n in result["statuses"].items() if s != pb.FRAME_STATUS_DUPLICATE)
    return {
        "store": store.split("?")[0].split(":")[0] + ("-normal" if "synchronous=normal" in store else ""),
        "frames_per_s": result["frames"] / result["seconds"],
        "frames": result["frames"],
        "seconds": result["seconds"],
        # Frames per second of server CPU time: what one core does when the server has it to itself (the machine may
        # be shared; wall-clock frames/s then undercounts).
        "frames_per_cpu_s": result["frames"] / cpu if cpu > 0 else float("nan"),
        "server_cpu_share": cpu / result["seconds"],
        "message_round_trip": _percentiles(result["latencies"], 50, 99),
        "applied_fraction_of_sample": applied / max(1, sum(result["statuses"].values())),
        "statuses": {pb.FrameStatus.Name(k): v for k, v in result["statuses"].items()},
        "single_frame_round_trip": latency,
        "paced": paced,
    }


def tls_comparison(args: argparse.Namespace, workdir: Path) -> dict:
    """The feature-mode throughput with and without mutual TLS, alternated on fresh SQLite stores in one run."""
    pki = BenchPKI(workdir / "pki")
    per_stream = args.tls_frames // args.streams // args.frames_per_message
    per_message = args.frames_per_message // args.subjects_per_message * args.subjects_per_message
    runs: dict[str, list[dict]] = {"plaintext": [], "tls": []}
    for round_ in range(args.tls_rounds):
        for arm in ("plaintext", "tls"):
            store = f"sqlite:///{workdir}/tls-{arm}-{round_}.db"
            payloads = [
                feature_payloads(1000 * round_ + s, per_stream, per_message, args.subjects_per_message, args.dim)
                for s in range(args.streams)
            ]
            extra = ["--embedding-dim", str(args.dim)]
            server = PinnedServer(args.server_core, store, workdir, extra, pki if arm == "tls" else None)
            try:
                cpu_before, client_before = server.cpu_seconds(), _own_cpu_seconds()
                result = asyncio.run(run_streams(server.target, payloads, args.window, per_message, server.credentials))
                cpu, client_cpu = server.cpu_seconds() - cpu_before, _own_cpu_seconds() - client_before
            finally:
                server.stop()
            runs[arm].append(
                {
                    "frames_per_s": result["frames"] / result["seconds"],
                    "frames_per_server_cpu_s": result["frames"] / cpu if cpu > 0 else float("nan"),
                    "frames_per_client_cpu_s": result["frames"] / client_cpu if client_cpu > 0 else float("nan"),
                }
            )
    mean = {arm: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for arm, rs in runs.items()}
    return {
        "rounds": runs,
        "mean": mean,
        "ratio_tls_over_plaintext": {k: mean["tls"][k] / mean["plaintext"][k] for k in mean["tls"]},
        "load_average": os.getloadavg(),
    }


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _paced(args: argparse.Namespace, target: str) -> dict:
    """Round trips at a steady --paced-rate frames/s: 16 camera streams, --paced-frames-per-message (one subject)."""
    streams, per_message = 16, args.paced_frames_per_message
    rate_per_stream = args.paced_rate / streams / per_message
    messages = int(rate_per_stream * args.paced_seconds)
    payloads = [feature_payloads(200 + s, messages, per_message, 1, args.dim) for s in range(streams)]
    latencies = asyncio.run(run_paced(target, payloads, rate_per_stream))
    summary = _percentiles(latencies[len(latencies) // 10 :], 50, 99, 99.9)
    return {"frames_per_s": args.paced_rate, "frames_per_message": per_message, **summary}


def lockstep_latency(target: str, n: int, dim: int) -> dict:
    import grpc

    from eqface.service.v1 import aggregator_pb2_grpc as pb_grpc

    rng = np.random.default_rng(7)
    identity = _unit(rng.normal(size=dim))
    frames = _unit(identity + 0.05 * rng.normal(size=(n, dim)))
    latencies = []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.AggregatorServiceStub(channel)
        import queue

        requests: queue.Queue = queue.Queue()
        responses = stub.StreamFrames(iter(requests.get, None))
        for i in range(n):
            started = time.perf_counter()
            requests.put(pb.StreamFramesRequest(frames=[feature_frame("latency", i + 1, frames[i], 0.9)]))
            next(responses)
            latencies.append(time.perf_counter() - started)
        requests.put(None)
        list(responses)
    return _percentiles(latencies[n // 10 :], 50, 99, 99.9)


# ------------------------------------------------------------------------------------------------------------ bytes
def bytes_per_subject(store_url: str, subjects: int, dim: int) -> dict:
    from eqface.service.aggregator import FrameInput, apply_frame
    from eqface.service.state import AggregationParams, SubjectRecord, encode_record
    from eqface.service.store import SubjectWrite, open_store

    params = AggregationParams(0.5, 0.3)
    rng = np.random.default_rng(0)
    store = open_store(store_url)
    try:
        before = store.stored_bytes()
        record_size = 0
        for start in range(0, subjects, 1000):
            writes = []
            for k in range(start, min(start + 1000, subjects)):
                record = SubjectRecord(f"camera-{k % 64:02d}/track-{k:08d}", params.new_aggregate())
                for seq, f in enumerate(_unit(rng.normal(size=(3, dim))), start=1):
                    apply_frame(record, FrameInput(record.subject_id, seq, f, 0.9))
                data = encode_record(record)
                record_size = len(data)
                writes.append(SubjectWrite(record.subject_id, 0, data))
            store.commit_subjects(writes)
        used = store.stored_bytes() - before
    finally:
        store.close()
    return {"record_bytes": record_size, "stored_bytes_per_subject": used / subjects}


# ------------------------------------------------------------------------------------------------------------ image
_BUILD_REPOSITORY = r"""
import sys
from pathlib import Path
import torch
from eqface.config import ModelConfig
from eqface.contract import InferenceSpec
from eqface.export.onnx import export_onnx
from eqface.models import build_model
from eqface.models.pretrained import load_backbone_weights
from eqface.serving.repository import write_model_repository

shared, workdir = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
net = build_model(ModelConfig(backbone="mobilefacenet", image_size=(112, 96), embedding_size=128))
load_backbone_weights(net.backbone, shared / "weights" / "mobilefacenet_casia_xiaoccer_068.npz")
export_onnx(net.eval(), InferenceSpec((112, 96), 128), workdir / "model.onnx")
write_model_repository(workdir / "model.onnx", workdir / "repository", variant="local")
"""


class ImagePhase:
    """Triton (pretrained MobileFaceNet, local repository) run by a helper process (this process holds gRPC
    channels by then: see eqface.serving.helper_process); the model is built in a child too, keeping torch out."""

    def __init__(self, workdir: Path) -> None:
        shared = paths.require_shared_data_dir()
        subprocess.run([sys.executable, "-c", _BUILD_REPOSITORY, str(shared), str(workdir)], check=True)
        self._triton = TritonHelper(workdir / "repository", workdir / "triton-helper.log").start()
        self.grpc_url = self._triton.grpc_url
        with np.load(shared / "celeba_wild_subset_rgb112.npz") as pack:
            blob, offsets = pack["jpeg_bytes"], pack["jpeg_offsets"]
            self.faces = [blob[offsets[i] : offsets[i + 1]].tobytes() for i in range(512)]

    def run(self, args: argparse.Namespace, workdir: Path) -> dict:
        extra = ["--embedding-dim", "128", "--triton-url", self.grpc_url, "--triton-max-batch", "32"]
        extra += ["--triton-timeout", "30"]  # a saturated CPU Triton answers slowly; this run measures, not fails
        server = PinnedServer(args.server_core, f"sqlite:///{workdir}/image.db", workdir, extra)
        try:
            n = args.image_frames // args.image_streams
            payloads = []
            for s in range(args.image_streams):
                messages = []
                for start in range(0, n, args.image_frames_per_message):
                    frames = [
                        image_frame(f"img{s}", start + j + 1, self.faces[(s * 97 + start + j) % len(self.faces)])
                        for j in range(args.image_frames_per_message)
                    ]
                    messages.append(pb.StreamFramesRequest(frames=frames).SerializeToString())
                payloads.append(messages)
            per_message = args.image_frames_per_message
            asyncio.run(run_streams(server.target, [p[:2] for p in payloads], 2, per_message))  # warm up Triton
            result = asyncio.run(run_streams(server.target, [p[2:] for p in payloads], 2, per_message))
        finally:
            server.stop()
        return {
            "frames_per_s": result["frames"] / result["seconds"],
            "message_round_trip": _percentiles(result["latencies"], 50, 99),
            "triton_alone_images_per_s": self._triton_alone(),
        }

    def _triton_alone(self) -> float:
        import tritonclient.grpc as grpcclient

        from eqface.serving.client import infer_images

        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            started, done = time.perf_counter(), 0
            while time.perf_counter() - started < 5:
                infer_images(client, self.faces[done % 480 : done % 480 + 32])
                done += 32
            return done / (time.perf_counter() - started)
        finally:
            client.close()

    def stop(self) -> None:
        self._triton.stop()


def _image_available() -> str | None:
    try:
        from eqface.serving.launcher import find_distribution

        find_distribution()
    except (ImportError, FileNotFoundError) as exc:
        return f"Triton not available ({exc})"
    shared = paths.shared_data_dir()
    if shared is None or not (shared / "weights").is_dir():
        return "the shared data folder's weights/ is not present (../shared/data or $EQFACE_SHARED_DATA)"
    return None


# ------------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=240_000, help="feature frames per throughput run")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--frames-per-message", type=int, default=128)
    p.add_argument("--subjects-per-message", type=int, default=8)
    p.add_argument("--window", type=int, default=4, help="messages in flight per stream")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--latency-frames", type=int, default=2000)
    p.add_argument("--paced-rate", type=float, default=10_000, help="frames/s of the steady-load latency phase")
    p.add_argument("--paced-seconds", type=float, default=5.0)
    p.add_argument("--paced-frames-per-message", type=int, default=8)
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--client-core", type=int, default=1)
    p.add_argument("--stores", nargs="+", default=["sqlite", "redis"], choices=["sqlite", "sqlite-normal", "redis"])
    p.add_argument("--subjects", type=int, default=20_000, help="subjects written for the bytes-per-subject figure")
    p.add_argument("--no-image", action="store_true")
    p.add_argument("--image-frames", type=int, default=3072)
    p.add_argument("--image-streams", type=int, default=4)
    p.add_argument("--image-frames-per-message", type=int, default=8)
    p.add_argument("--tls-frames", type=int, default=120_000, help="feature frames per run of the TLS comparison")
    p.add_argument("--tls-rounds", type=int, default=2, help="plaintext/TLS run pairs, alternated")
    p.add_argument("--no-tls", action="store_true", help="skip the TLS comparison")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="eqface-bench-service-"))
    report: dict = {"cores": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    redis = None
    image = None
    try:
        image_missing = "skipped (--no-image)" if args.no_image else _image_available()
        os.sched_setaffinity(0, {args.client_core})
        urls = {"sqlite": f"sqlite:///{workdir}/bench.db", "sqlite-normal": f"sqlite:///{workdir}/bench-normal.db"}
        urls["sqlite-normal"] += "?synchronous=normal"
        if "redis" in args.stores:
            if shutil.which("redis-server"):
                redis = _start_redis(workdir)
                urls["redis"] = f"redis://127.0.0.1:{redis[1]}/0"
            else:
                report["redis"] = "skipped: redis-server not installed"
        report["throughput"] = [throughput(args, urls[s], workdir) for s in args.stores if s in urls]
        report["tls"] = "skipped (--no-tls)" if args.no_tls else tls_comparison(args, workdir)
        bytes_urls = {"sqlite": f"sqlite:///{workdir}/bytes.db", "redis": urls.get("redis", "") + "?prefix=bytes:"}
        report["bytes_per_subject"] = {
            s: bytes_per_subject(bytes_urls[s], args.subjects, args.dim) for s in ("sqlite", "redis") if s in urls
        }
        if image_missing is None:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))  # Triton (a child) inherits this: every core
            image = ImagePhase(workdir)
            os.sched_setaffinity(0, {args.client_core})
            report["image"] = image.run(args, workdir)
        else:
            report["image"] = image_missing
    finally:
        if image is not None:
            image.stop()
        if redis is not None:
            redis[0].stop(grace_s=10)
        shutil.rmtree(workdir, ignore_errors=True)
    _print(report, args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


def _start_redis(workdir: Path) -> tuple[processes.Child, int]:
    import redis as redis_py

    def answers() -> bool:
        try:
            return bool(redis_py.Redis(port=port).ping())
        except redis_py.RedisError:
            return False

    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""]
    args += ["--appendonly", "yes", "--appendfsync", "always"]
    child = processes.start("redis-server", args, workdir / "redis.log", die_with_parent=False)
    try:
        processes.wait_until(answers, child, 10, f"redis-server answering PING on {port}")
    except BaseException:
        child.stop(grace_s=10)
        raise
    return child, port


def _print(report: dict, args: argparse.Namespace) -> None:
    print(
        f"\nEQFace aggregation service benchmark ({report['cores']} cores, load average at start "
        f"{report['load_average_at_start'][0]:.1f}); server pinned to core {args.server_core}, client to core "
        f"{args.client_core}"
    )
    print(
        f"feature mode: {args.streams} streams x {args.frames_per_message} frames/message "
        f"({args.subjects_per_message} subjects/message), {args.window} messages in flight per stream, D={args.dim}"
    )
    for t in report["throughput"]:
        rt, one = t["message_round_trip"], t["single_frame_round_trip"]
        print(
            f"  {t['store']:<14} {t['frames_per_s']:>9,.0f} frames/s  ({t['frames']} frames in {t['seconds']:.1f} s; "
            f"message round trip p50 {rt['p50_ms']:.1f} ms p99 {rt['p99_ms']:.1f} ms)"
        )
        print(
            f"  {'':<14} {t['frames_per_cpu_s']:>9,.0f} frames per server CPU-second (the server got "
            f"{100 * t['server_cpu_share']:.0f}% of its core)"
        )
        print(
            f"  {'':<14} single-frame durable update round trip p50 {one['p50_ms']:.2f} ms  "
            f"p99 {one['p99_ms']:.2f} ms  p99.9 {one['p99.9_ms']:.2f} ms (one frame per message, lock-step)"
        )
        paced = t["paced"]
        print(
            f"  {'':<14} at a steady {paced['frames_per_s']:,.0f} frames/s (16 streams, "
            f"{paced['frames_per_message']} frames/message): "
            f"round trip p50 {paced['p50_ms']:.2f} ms  p99 {paced['p99_ms']:.2f} ms  "
            f"p99.9 {paced['p99.9_ms']:.2f} ms"
        )
        print(f"  {'':<14} sampled statuses {t['statuses']}")
    if "redis" in report and isinstance(report["redis"], str):
        print(f"  redis: {report['redis']}")
    tls = report["tls"]
    if isinstance(tls, dict):
        ratio, mean = tls["ratio_tls_over_plaintext"], tls["mean"]
        print(
            f"mutual TLS vs plaintext (SQLite, {args.tls_rounds} alternated run pairs of {args.tls_frames} frames; "
            f"load average {tls['load_average'][0]:.1f}):"
        )
        for key, what in (
            ("frames_per_s", "frames/s"),
            ("frames_per_server_cpu_s", "frames per server CPU-s"),
            ("frames_per_client_cpu_s", "frames per client CPU-s"),
        ):
            print(
                f"  {what:<26} plaintext {mean['plaintext'][key]:>9,.0f}  TLS {mean['tls'][key]:>9,.0f}  "
                f"ratio TLS/plaintext {ratio[key]:.3f}"
            )
    else:
        print(f"TLS comparison: {tls}")
    print("bytes per subject (512-d template + counters):")
    for store, b in report["bytes_per_subject"].items():
        used = b["stored_bytes_per_subject"]
        print(f"  {store:<14} record {b['record_bytes']} B, backend uses {used:,.0f} B/subject")
    image = report["image"]
    if isinstance(image, dict):
        rt = image["message_round_trip"]
        print(
            f"image mode (JPEG, Triton bytes-in ensemble, MobileFaceNet 112x96): "
            f"{image['frames_per_s']:,.0f} frames/s end to end (message of {args.image_frames_per_message}: "
            f"p50 {rt['p50_ms']:.0f} ms, p99 {rt['p99_ms']:.0f} ms); "
            f"Triton alone {image['triton_alone_images_per_s']:,.0f} images/s"
        )
    else:
        print(f"image mode: {image}")


if __name__ == "__main__":
    raise SystemExit(main())
