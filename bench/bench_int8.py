"""int8 CPU serving: the quantized model (``eqface quantize``) against its fp32 source, side by side in one run.

1. Accuracy on held-out identities (never calibrated on): 10-fold verification accuracy of both files on the same
   pairs, Spearman(quality_int8, quality_fp32), mean int8-vs-fp32 embedding cosine. Targets: a drop ≤ 0.3 points,
   Spearman ≥ 0.98.
2. Throughput, images/s at batch 1 and 32, of three files interleaved in every round (median of --rounds): fp32
   as exported, int8 as `eqface quantize` writes it (PRelu folded into its Convs, eqface.export.prelu), and int8
   with PRelu left as the export's fp32 Min/Mul/Add rewrite (`--prelu rewrite`, what folding is measured against):
     raw ort   onnxruntime in this process, --threads intra-op threads, no spinning (as in the served model)
     triton    the same file behind the local Triton (python backend → onnxruntime), one gRPC client sending
               requests of that batch back to back to eqface_onnx; one server per file, all up throughout
     triton concurrent  --clients closed-loop clients of one face per request against the same server: Triton's
               dynamic batching joins them (a serving load: many cameras, one face each)
   plus CPU seconds per image (this process for raw ort; tritonserver, its backend stubs and this client for Triton)
   and achieved GFLOP/s ÷ this machine's fp32 matmul GFLOP/s (torch sgemm 1024³ on the same thread count), counted
   two ways: the model's Conv/Gemm FLOPs (the fp32 graph's) × images/s, and the FLOPs each file executes (folding
   PRelu doubles the int8 file's convolutions). Target: int8 ≥ 1.5× fp32.
3. Profile: onnxruntime's per-op profile of the three files at batch 1 and 32, top op types by time.

  python bench/bench_int8.py                                    # the shipped model, runs/mfn-final/model.onnx
  python bench/bench_int8.py --fp32 runs/mfn-final/model.onnx --int8 runs/mfn-final/model.int8.onnx --json b.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from bench_triton import closed_loop

from eqface import contract, paths
from eqface.data.packs import load_pack
from eqface.data.sources import split_identities
from eqface.export.flops import count_flops
from eqface.export.onnx import onnx_session, run_onnx
from eqface.export.quantize import (
    DEFAULT_CALIBRATION_PACK,
    DEFAULT_HELD_OUT_IDENTITIES,
    QuantizationSettings,
    compare_precisions,
    pack_training_faces,
    quantize_onnx,
)
from eqface.serving.client import infer_tensor, tensor_input
from eqface.serving.launcher import TritonServer
from eqface.serving.model_configs import OnnxRuntimeSettings
from eqface.serving.repository import write_model_repository

BATCHES = (1, 32)
CONCURRENT = "triton concurrent"  # --clients clients, one face per request, batched by Triton
WARMUP_S = 0.5
# The fp32 file, its int8 file with PRelu left as the fp32 rewrite (separates what folding brings from what int8
# brings), and its int8 file as `eqface quantize` writes it.
FILES = ("fp32", "int8-rewrite", "int8")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_tree_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of ``pid`` and its live descendants (tritonserver and its python-backend stubs)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, times = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(p, 0.0) for p in tree)


def measure(run: Callable[[], object], batch: int, seconds: float, cpu: Callable[[], float]) -> dict[str, float]:
    """images/s and CPU seconds per image of ``run()`` (one call = ``batch`` images), after one warm-up call."""
    run()
    done, cpu0, start = 0, cpu(), time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        done += batch
    wall, used = time.perf_counter() - start, cpu() - cpu0
    return {"images_per_s": done / wall, "cpu_s_per_image": used / done}


def matmul_gflops(threads: int, size: int = 1024, seconds: float = 2.0) -> float:
    """This machine's fp32 matmul rate (torch sgemm) on ``threads`` threads, GFLOP/s."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
        a @ a
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ a
            runs += 1
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 * runs / elapsed / 1e9


def profile_top_ops(path: Path, x: np.ndarray, threads: int, runs: int, top: int = 8) -> list[tuple[str, float]]:
    """(op type, share of node time) of the ``top`` op types in onnxruntime's profile of ``runs`` runs on ``x``."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bench-int8-profile-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            run_onnx(session, x)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(by_op.values()) or 1.0
    return [(op, t / total) for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]]


def concurrent_load(server: TritonServer, x: np.ndarray, args) -> dict[str, float]:
    """images/s of --clients closed-loop clients sending one face per request (Triton's dynamic batching joins them),
    CPU s/image of tritonserver, its stubs and this process over the whole phase, and the batch Triton formed."""
    singles = [tensor_input(x[i : i + 1]) for i in range(len(x))]
    cpu = lambda: process_tree_cpu_seconds(server.pid) + own_cpu_seconds()  # noqa: E731
    cpu0, start = cpu(), time.perf_counter()
    load = asyncio.run(closed_loop(server, contract.ONNX_MODEL_NAME, singles, args.clients, WARMUP_S, args.seconds))
    used, wall = cpu() - cpu0, time.perf_counter() - start
    # CPU over warm-up and window together, per image at the window's rate over the same time: an estimate.
    return {
        "images_per_s": load.images_per_s,
        "cpu_s_per_image": used / (load.images_per_s * wall),
        "average_batch": load.average_batch,
        "p50_ms": load.p50_ms,
    }


def throughput(files: dict[str, Path], x: np.ndarray, args) -> tuple[dict, dict]:
    """Median images/s and CPU s/image per (path, precision, batch) over interleaved rounds; plus the load averages."""
    import tritonclient.grpc as grpcclient

    sessions = {p: onnx_session(files[p], args.threads, spinning=False) for p in FILES}
    runtime = OnnxRuntimeSettings(threads=args.threads, spinning=False)
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        servers = {}
        try:
            for i, p in enumerate(FILES):
                write_model_repository(files[p], Path(tmp) / str(i), runtime=runtime)
                servers[p] = TritonServer(Path(tmp) / str(i)).start()
            clients = {p: grpcclient.InferenceServerClient(s.grpc_url) for p, s in servers.items()}
            load = {"before": os.getloadavg()[0]}
            for _ in range(args.rounds):
                r: dict = {}
                for p in FILES:
                    for b in BATCHES:
                        xb = np.ascontiguousarray(x[:b])
                        r[f"raw ort/{p}/{b}"] = measure(
                            lambda s=sessions[p], xb=xb: run_onnx(s, xb), b, args.seconds, own_cpu_seconds
                        )
                        r[f"triton/{p}/{b}"] = measure(
                            lambda c=clients[p], xb=xb: infer_tensor(c, xb),
                            b,
                            args.seconds,
                            lambda pid=servers[p].pid: process_tree_cpu_seconds(pid) + own_cpu_seconds(),
                        )
                    if args.clients:
                        r[f"{CONCURRENT}/{p}/1"] = concurrent_load(servers[p], x, args)
                rounds.append(r)
            load["after"] = os.getloadavg()[0]
            for c in clients.values():
                c.close()
        finally:
            for s in servers.values():
                s.stop()
    median = {
        key: {m: float(statistics.median(r[key][m] for r in rounds)) for m in rounds[0][key]} for key in rounds[0]
    }
    return median, {"load_average_1min": load, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32", type=Path, default=Path("runs/mfn-final/model.onnx"), help="the fp32 model")
    parser.add_argument("--int8", type=Path, help="its int8 file (default: quantized now with default settings)")
    parser.add_argument("--data", default=DEFAULT_CALIBRATION_PACK, help="face pack: calibration and evaluation")
    parser.add_argument("--held-out-identities", type=int, default=DEFAULT_HELD_OUT_IDENTITIES)
    parser.add_argument("--calibration-images", type=int, default=QuantizationSettings().calibration_images)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="onnxruntime intra-op threads, all sides")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per phase")
    parser.add_argument(
        "--clients", type=int, default=32, help="closed-loop Triton clients of one face each (0: skip the phase)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every phase")
    parser.add_argument(
        "--profile-runs",
        type=int,
        default=20,
        help="batch-32 runs profiled per file, as many images at batch 1 (0: none)",
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    if not args.fp32.is_file():
        parser.error(f"{args.fp32} not found: pass --fp32 FILE.onnx (an `eqface export` output)")

    calibration = pack_training_faces(args.data, args.held_out_identities)
    held_out = split_identities(load_pack(paths.resolve(args.data)), args.held_out_identities)[1]
    with tempfile.TemporaryDirectory(prefix="bench-int8-q-") as tmp:
        int8 = args.int8
        quantize_cpu = None
        settings = QuantizationSettings(calibration_images=args.calibration_images)
        if int8 is None:
            cpu0, int8 = own_cpu_seconds(), Path(tmp) / "model.int8.onnx"
            quantize_onnx(args.fp32, int8, calibration, settings)
            quantize_cpu = own_cpu_seconds() - cpu0
        files = {"fp32": args.fp32, "int8-rewrite": Path(tmp) / "model.int8-rewrite.onnx", "int8": int8}
        quantize_onnx(args.fp32, files["int8-rewrite"], calibration, replace(settings, prelu="rewrite"))
        comparison = compare_precisions(args.fp32, int8, held_out)
        comparison_rewrite = compare_precisions(args.fp32, files["int8-rewrite"], held_out)
        executed = {p: sum(count_flops(files[p]).values()) for p in FILES}
        h, w = onnx_session(args.fp32).get_inputs()[0].shape[2:]
        x = contract.preprocess([held_out.image(i) for i in range(max(BATCHES))], (int(h), int(w)))
        median, extra = throughput(files, x, args)
        profiles = {
            f"{p}, batch {b}": profile_top_ops(files[p], x[:b], args.threads, args.profile_runs * 32 // b)
            for p in FILES
            for b in BATCHES
            if args.profile_runs
        }
    comparisons = {"int8": comparison, "int8-rewrite": comparison_rewrite}
    report(args, calibration.description, quantize_cpu, comparisons, executed, median, extra, profiles)


def phases(args) -> list[tuple[str, int]]:
    """(path, batch) of every measured phase."""
    return [(p, b) for p in ("raw ort", "triton") for b in BATCHES] + [(CONCURRENT, 1)] * (args.clients > 0)


def report(args, calibrated_on, quantize_cpu, comparisons, executed, median, extra, profiles) -> None:
    flops = sum(count_flops(args.fp32).values())
    peak = matmul_gflops(args.threads)
    load = extra["load_average_1min"]
    print(
        f"int8 vs fp32: {args.fp32}; {args.threads} onnxruntime threads, {os.cpu_count()} cores, median of "
        f"{args.rounds} round(s) × {args.seconds:g} s per phase; 1-min load average {load['before']:.1f} before, "
        f"{load['after']:.1f} after"
    )
    quantized = f", quantized in {quantize_cpu:.0f} CPU s" if quantize_cpu is not None else ""
    print(f"calibrated on {calibrated_on}{quantized}")
    for name, c in comparisons.items():
        print(
            f"held-out faces, {name}: {c.faces} faces, {c.pairs} pairs: accuracy fp32 {100 * c.accuracy_fp32:.2f} %, "
            f"int8 {100 * c.accuracy_int8:.2f} % (drop {c.accuracy_drop_points:.2f} points, target ≤ 0.3); "
            f"Spearman(quality int8, fp32) {c.quality_spearman:.4f} (target ≥ 0.98); embedding cosine "
            f"{c.embedding_cosine:.4f}"
        )
    print(
        f"model: {flops / 1e9:.3f} GFLOP per image (Conv/Gemm); executed per image: "
        + ", ".join(f"{p} {executed[p] / 1e9:.3f}" for p in FILES)
        + f"; fp32 matmul on {args.threads} threads: {peak:.1f} GFLOP/s"
    )
    print(
        f"  {'':<18}{'file':<14}{'batch':>5}{'images/s':>10}{'CPU ms/img':>11}{'GFLOP/s':>9}{'÷ matmul':>9}"
        f"{'executed ÷ matmul':>19}"
    )
    for key, m in median.items():
        path, p, b = key.split("/")
        achieved = flops * m["images_per_s"] / 1e9
        done = executed[p] * m["images_per_s"] / 1e9
        m.update(gflops=achieved, of_matmul=achieved / peak, executed_gflops=done, executed_of_matmul=done / peak)
        batched = (
            f"  (Triton's batch {m['average_batch']:.1f}, p50 {m['p50_ms']:.1f} ms)" if "average_batch" in m else ""
        )
        print(
            f"  {path:<18}{p:<14}{b:>5}{m['images_per_s']:>10.1f}{1e3 * m['cpu_s_per_image']:>11.2f}"
            f"{achieved:>9.2f}{achieved / peak:>9.3f}{done / peak:>19.3f}{batched}"
        )
    ratios = {}
    for a, base in (("int8", "fp32"), ("int8-rewrite", "fp32"), ("int8", "int8-rewrite")):
        for path, b in phases(args):
            m, n = median[f"{path}/{a}/{b}"], median[f"{path}/{base}/{b}"]
            speed, cpu = m["images_per_s"] / n["images_per_s"], n["cpu_s_per_image"] / m["cpu_s_per_image"]
            ratios[f"{a} / {base}, {path}, batch {b}"] = {"throughput": speed, "cpu_per_image": cpu}
            print(
                f"  {a:<12} ÷ {base:<12} {path:<18} batch {b:>2}: {speed:.2f}× images/s, {cpu:.2f}× less CPU per image"
            )
    for p, top in profiles.items():
        print(f"  profile {p}: " + ", ".join(f"{op} {100 * share:.0f} %" for op, share in top))
    if args.json:
        data = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "calibrated_on": calibrated_on,
            "quantize_cpu_s": quantize_cpu,
            "accuracy": {
                name: {**asdict(c), "accuracy_drop_points": c.accuracy_drop_points} for name, c in comparisons.items()
            },
            "gflop_per_image": flops / 1e9,
            "executed_gflop_per_image": {p: f / 1e9 for p, f in executed.items()},
            "matmul_gflops": peak,
            "median": median,
            "ratios": ratios,
            "profiles": profiles,
            **extra,
        }
        args.json.write_text(json.dumps(data, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
