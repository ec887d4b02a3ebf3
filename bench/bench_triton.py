"""Triton serving throughput versus raw in-process onnxruntime, on the same ONNX file, threads and real faces.

Phases, side by side in one run (repeat with --rounds; the report gives the median of each figure):
  ort             raw onnxruntime in this process at every batch size of --batch-sizes, with intra-op spinning on
                  (onnxruntime's default) and off; the best of all counts
  triton dyn on   --clients closed-loop clients, each sending one image per request to eqface_onnx and waiting for
                  the answer, against the local (python-backend) repository with Triton's plain
                  `dynamic_batching {}` (no preferred sizes, no queue delay: the shipped default)
  triton dyn pref the same load, dynamic batching with --preferred-batch-sizes and --max-queue-delay-us
  triton dyn off  the same load, dynamic batching off (every request executes alone)
  ensemble        (--ensemble) the same load of JPEG files through the bytes-in ensemble eqface, dynamic batching on

Reported: images/s of each phase, Triton(on) ÷ best raw onnxruntime (target ≥ 0.9), on ÷ off, pref ÷ on (what
preferred batch sizes add over `dynamic_batching {}`; the shipped config follows it), the average batch Triton
formed (nv_inference_count ÷ nv_inference_exec_count from its /metrics; target ≥ 8 at 32 clients), p50/p99 latency.
The model is MobileFaceNet (112×96, 128-d) with its pretrained backbone; clients are asyncio coroutines (one gRPC
channel each) in this process, so they share the machine's cores with the server, as co-located cameras would not.

  python bench/bench_triton.py                                 # 32 clients, 3 rounds of 10 s per phase, every core
  python bench/bench_triton.py --threads 2 --rounds 5 --ensemble --json bench_triton.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from eqface import contract, paths
from eqface.config import ModelConfig
from eqface.contract import InferenceSpec
from eqface.export.onnx import export_onnx, onnx_session, run_onnx
from eqface.models import build_model
from eqface.models.pretrained import load_backbone_weights
from eqface.serving.client import OUTPUTS, image_input, tensor_input
from eqface.serving.launcher import TritonServer
from eqface.serving.metrics import scrape_inference_counts
from eqface.serving.model_configs import Batching, OnnxRuntimeSettings
from eqface.serving.repository import write_model_repository

MOBILEFACENET = ModelConfig(backbone="mobilefacenet", image_size=(112, 96), embedding_size=128)


@dataclass
class LoadResult:
    images_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    average_batch: float


def build_onnx(shared_data: Path, out: Path) -> Path:
    torch.manual_seed(0)
    net = build_model(MOBILEFACENET)
    load_backbone_weights(net.backbone, shared_data / "weights" / "mobilefacenet_casia_xiaoccer_068.npz")
    export_onnx(net.eval(), InferenceSpec(tuple(MOBILEFACENET.image_size), MOBILEFACENET.embedding_size), out)
    return out


def real_faces(shared_data: Path, count: int) -> tuple[list[bytes], np.ndarray]:
    from eqface.data.decode import decode_image
    from eqface.data.packs import load_pack

    source = load_pack(shared_data / "celeba_wild_subset_rgb112.npz")
    jpegs = [source.read(i) for i in range(count)]
    size = tuple(MOBILEFACENET.image_size)
    return jpegs, contract.preprocess([decode_image(b, "pack image") for b in jpegs], size)


def bench_ort(session, x: np.ndarray, batch_sizes: list[int], seconds: float) -> dict[int, float]:
    """Images/s of raw onnxruntime per batch size (inputs cycle through the real faces)."""
    rates = {}
    for batch in batch_sizes:
        batch_x = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
        run_onnx(session, batch_x)  # warm-up: first-run allocations
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            run_onnx(session, batch_x)
            done += batch
        rates[batch] = done / (time.perf_counter() - start)
    return rates


async def closed_loop(
    server: TritonServer, model: str, inputs: list, clients: int, warmup_s: float, seconds: float
) -> LoadResult:
    """``clients`` coroutines, each one request in flight: send one item, wait, repeat; measured after a warm-up."""
    import tritonclient.grpc.aio as grpcaio
    from tritonclient.grpc import InferRequestedOutput

    loop = asyncio.get_running_loop()
    requested = [InferRequestedOutput(name) for name in OUTPUTS]
    window_start = time.perf_counter() + warmup_s
    window_end = window_start + seconds
    latencies: list[float] = []

    async def client_loop(i: int) -> None:
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            while (sent := time.perf_counter()) < window_end:
                await client.infer(model, [inputs[i % len(inputs)]], outputs=requested)
                if sent >= window_start:
                    latencies.append(time.perf_counter() - sent)
        finally:
            await client.close()

    async def counters_at(t: float):
        await asyncio.sleep(max(0.0, t - time.perf_counter()))
        return await loop.run_in_executor(None, scrape_inference_counts, server.metrics_url, model_counted(model))

    tasks = [asyncio.create_task(client_loop(i)) for i in range(clients)]
    before = await counters_at(window_start)
    after = await counters_at(window_end)
    await asyncio.gather(*tasks)
    window = after - before
    ms = np.array(latencies) * 1e3
    return LoadResult(
        images_per_s=window.inferences / seconds,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
        requests=window.inferences,
        average_batch=window.average_batch_size,
    )


def model_counted(model: str) -> str:
    # The ensemble itself never executes; its batching happens in the composing eqface_onnx.
    return contract.ONNX_MODEL_NAME if model == contract.ENSEMBLE_MODEL_NAME else model


def run_round(args, sessions, x, jpegs, servers) -> dict[str, object]:
    ort_rates = {}
    for label, session in sessions.items():
        rates = bench_ort(session, x, args.batch_sizes, args.ort_seconds)
        ort_rates |= {f"{label} b{batch}": rate for batch, rate in rates.items()}
    single = [tensor_input(x[i : i + 1]) for i in range(len(x))]
    result: dict[str, object] = {"ort": ort_rates}
    for name, server in servers.items():
        result[name] = asyncio.run(
            closed_loop(server, contract.ONNX_MODEL_NAME, single, args.clients, args.warmup, args.seconds)
        )
    if args.ensemble:
        images = [image_input([b]) for b in jpegs]
        load = closed_loop(
            servers["dyn_on"], contract.ENSEMBLE_MODEL_NAME, images, args.clients, args.warmup, args.seconds
        )
        result["ensemble"] = asyncio.run(load)
    return result


def summarise(rounds: list[dict[str, object]]) -> dict[str, float]:
    def med(values) -> float:
        return float(statistics.median(values))

    best = [max(r["ort"].values()) for r in rounds]
    best_batch = [max(r["ort"], key=r["ort"].get) for r in rounds]
    on = [r["dyn_on"] for r in rounds]
    pref = [r["dyn_pref"] for r in rounds]
    off = [r["dyn_off"] for r in rounds]
    summary = {
        "ort_best_images_per_s": med(best),
        "ort_best_batch": statistics.mode(best_batch),
        "ort_batch1_images_per_s": med(max(v for k, v in r["ort"].items() if k.endswith(" b1")) for r in rounds),
        "triton_on_images_per_s": med(o.images_per_s for o in on),
        "triton_pref_images_per_s": med(p.images_per_s for p in pref),
        "triton_off_images_per_s": med(o.images_per_s for o in off),
        "ratio_triton_on_vs_ort_best": med(o.images_per_s / b for o, b in zip(on, best, strict=True)),
        "ratio_on_vs_off": med(o.images_per_s / f.images_per_s for o, f in zip(on, off, strict=True)),
        "ratio_pref_vs_on": med(p.images_per_s / o.images_per_s for p, o in zip(pref, on, strict=True)),
        "average_batch_pref": med(p.average_batch for p in pref),
        "p50_ms_pref": med(p.p50_ms for p in pref),
        "p99_ms_pref": med(p.p99_ms for p in pref),
        "average_batch_on": med(o.average_batch for o in on),
        "average_batch_off": med(f.average_batch for f in off),
        "p50_ms_on": med(o.p50_ms for o in on),
        "p99_ms_on": med(o.p99_ms for o in on),
        "p50_ms_off": med(f.p50_ms for f in off),
        "p99_ms_off": med(f.p99_ms for f in off),
    }
    if "ensemble" in rounds[0]:
        ens = [r["ensemble"] for r in rounds]
        summary |= {
            "ensemble_images_per_s": med(e.images_per_s for e in ens),
            "ensemble_p50_ms": med(e.p50_ms for e in ens),
            "ensemble_p99_ms": med(e.p99_ms for e in ens),
        }
    return summary


def report(args, rounds, summary) -> None:
    for i, r in enumerate(rounds, 1):
        ort = "  ".join(f"{k}:{v:.0f}" for k, v in r["ort"].items())
        print(f"round {i}: ort img/s {ort}")
        for name in ("dyn_on", "dyn_pref", "dyn_off", "ensemble"):
            if name in r:
                o = r[name]
                print(
                    f"         triton {name:<8} {o.images_per_s:7.1f} img/s  p50 {o.p50_ms:6.1f} ms  "
                    f"p99 {o.p99_ms:6.1f} ms  avg batch {o.average_batch:5.1f}  ({o.requests} requests)"
                )
    s = summary
    print(
        f"\nMobileFaceNet 112x96 → 128-d + quality, {args.threads} onnxruntime threads, {args.clients} clients, "
        f"{os.cpu_count()} cores, median of {len(rounds)} round(s); 1-min load average "
        f"{s['load_average_before']:.1f} before, {s['load_average_after']:.1f} after"
    )
    print(
        f"  raw onnxruntime  best {s['ort_best_images_per_s']:.1f} img/s ({s['ort_best_batch']}); "
        f"batch 1 {s['ort_batch1_images_per_s']:.1f}"
    )
    print(
        f"  triton dyn on    {s['triton_on_images_per_s']:.1f} img/s, p50 {s['p50_ms_on']:.1f} ms, "
        f"p99 {s['p99_ms_on']:.1f} ms, average batch {s['average_batch_on']:.1f}"
    )
    print(
        f"  triton dyn pref  {s['triton_pref_images_per_s']:.1f} img/s, p50 {s['p50_ms_pref']:.1f} ms, "
        f"p99 {s['p99_ms_pref']:.1f} ms, average batch {s['average_batch_pref']:.1f} (preferred "
        f"{' '.join(map(str, args.preferred_batch_sizes))}, delay {args.max_queue_delay_us} µs)"
    )
    print(
        f"  triton dyn off   {s['triton_off_images_per_s']:.1f} img/s, p50 {s['p50_ms_off']:.1f} ms, "
        f"p99 {s['p99_ms_off']:.1f} ms, average batch {s['average_batch_off']:.1f}"
    )
    if "ensemble_images_per_s" in s:
        print(
            f"  ensemble (JPEG)  {s['ensemble_images_per_s']:.1f} img/s, p50 {s['ensemble_p50_ms']:.1f} ms, "
            f"p99 {s['ensemble_p99_ms']:.1f} ms"
        )
    print(f"  ratio triton(on) / ort(best) = {s['ratio_triton_on_vs_ort_best']:.2f}   (target ≥ 0.9)")
    print(f"  ratio on / off               = {s['ratio_on_vs_off']:.2f}")
    print(f"  ratio pref / on              = {s['ratio_pref_vs_on']:.2f}   (> 1: preferred sizes help)")
    print(f"  average batch (on)           = {s['average_batch_on']:.1f}    (target ≥ 8)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="onnxruntime intra-op threads, both sides")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per Triton phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each Triton phase")
    parser.add_argument("--ort-seconds", type=float, default=1.5, help="seconds per onnxruntime batch size")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every phase")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    parser.add_argument(
        "--preferred-batch-sizes", type=int, nargs="+", default=[16, 32, 64], help="the dyn pref arm's sizes"
    )
    parser.add_argument("--max-queue-delay-us", type=int, default=2000, help="the dyn pref arm's queue delay")
    parser.add_argument("--ensemble", action="store_true", help="also measure the bytes-in ensemble")
    parser.add_argument("--spinning", action="store_true", help="let Triton's onnxruntime threads spin (default off)")
    parser.add_argument(
        "--shared-data",
        type=Path,
        default=paths.shared_data_dir(),
        help="default: ../shared/data or $EQFACE_SHARED_DATA",
    )
    parser.add_argument("--json", type=Path, help="write every measurement and the summary here")
    args = parser.parse_args()
    if args.shared_data is None:
        parser.error(f"no shared data folder found (../shared/data); pass --shared-data or set ${paths.ENV_VAR}")

    with tempfile.TemporaryDirectory(prefix="bench-triton-") as tmp:
        tmp = Path(tmp)
        onnx_path = build_onnx(args.shared_data, tmp / "model.onnx")
        jpegs, x = real_faces(args.shared_data, 64)
        sessions = {
            "spin": onnx_session(onnx_path, args.threads, True),
            "nospin": onnx_session(onnx_path, args.threads, False),
        }
        runtime = OnnxRuntimeSettings(threads=args.threads, spinning=args.spinning)
        servers = {}
        arms = {
            "dyn_on": Batching(),  # Triton's `dynamic_batching {}`
            "dyn_pref": Batching(
                preferred_batch_sizes=tuple(args.preferred_batch_sizes), max_queue_delay_us=args.max_queue_delay_us
            ),
            "dyn_off": Batching(dynamic=False),
        }
        for name, batching in arms.items():
            write_model_repository(onnx_path, tmp / name, batching=batching, runtime=runtime)
            servers[name] = TritonServer(tmp / name).start()
        try:
            load_before = os.getloadavg()[0]
            rounds = [run_round(args, sessions, x, jpegs, servers) for _ in range(args.rounds)]
            load_after = os.getloadavg()[0]
        finally:
            for server in servers.values():
                server.stop()
    summary = summarise(rounds) | {"load_average_before": load_before, "load_average_after": load_after}
    report(args, rounds, summary)
    if args.json:
        data = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "summary": summary,
            "rounds": [{k: (asdict(v) if isinstance(v, LoadResult) else v) for k, v in r.items()} for r in rounds],
        }
        args.json.write_text(json.dumps(data, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
