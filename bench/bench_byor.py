"""What bringing your own recogniser costs at serving time: the grafted BYOR model behind Triton versus the original
pretrained ONNX in raw onnxruntime, side by side in one run, on the same real faces and thread count.

Phases (each --seconds long, repeated --rounds times interleaved; the report gives medians):
  original ort    the shared pretrained recogniser as shipped (batch fixed to 1), raw onnxruntime in this process,
                  fed its own normalisation ((x − 127) / 128, RGB); batch 32 is impossible for it, so its batch-32
                  figure is 32 sequential batch-1 runs (what a caller of the original file can do)
  imported ort    (when the build has one) the imported recogniser: the same graph with its batch axis made dynamic
                  and the tap as a second output, no quality head — separates "dynamic batch" from "graft"
  grafted ort     the served model (original graph + quality head, contract input/outputs), raw onnxruntime
  grafted triton  the same file served by Triton (local variant: python backend → onnxruntime, dynamic batching),
                  one gRPC client sending batch-1 requests back to back, and one sending batch-32 requests

Printed ratios: the cost of the graft (grafted ort ÷ original ort, grafted ort ÷ imported ort) and the cost of Triton
(grafted triton ÷ grafted ort), at batch 1 and at batch 32, and the end-to-end figure (grafted triton ÷ original ort).

  python bench/bench_byor.py                                   # the demo's BYOR build (./scripts/demo.sh makes it)
  python bench/bench_byor.py --grafted runs/byor/model.onnx --threads 2 --rounds 3 --json bench_byor.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from eqface import contract, paths
from eqface.byor.export import pack_faces
from eqface.byor.normalisation import InputNormalisation
from eqface.export.onnx import onnx_session, run_onnx
from eqface.serving.client import infer_tensor
from eqface.serving.launcher import TritonServer
from eqface.serving.model_configs import OnnxRuntimeSettings
from eqface.serving.repository import write_model_repository

ORIGINAL = "shared:weights/mobilefacenet_photo_analyze.onnx"
ORIGINAL_NORMALISATION = InputNormalisation((127.0,), (128.0,), "RGB")  # issue 13: (x − 127) / 128, RGB
BATCHES = (1, 32)


def rate(run, batch: int, seconds: float) -> float:
    """Images/s of ``run()`` (one call = ``batch`` images), after one unmeasured warm-up call."""
    run()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        done += batch
    return done / (time.perf_counter() - start)


def ort_rates(session, x: np.ndarray, seconds: float, fixed_batch: bool = False) -> dict[int, float]:
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    rates = {}
    for batch in BATCHES:
        xb = np.ascontiguousarray(x[:batch])
        if fixed_batch:  # the original file takes one image per run

            def run(xb=xb):
                for i in range(len(xb)):
                    session.run(outputs, {name: xb[i : i + 1]})

        else:

            def run(xb=xb):
                session.run(outputs, {name: xb})

        rates[batch] = rate(run, batch, seconds)
    return rates


def triton_rates(client, x: np.ndarray, seconds: float) -> dict[int, float]:
    return {batch: rate(lambda b=batch: infer_tensor(client, x[:b]), batch, seconds) for batch in BATCHES}


def default_grafted() -> Path | None:
    from eqface.stack.byor_model import cached_model

    return cached_model(Path("runs"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", default=ORIGINAL, help="the pretrained recogniser as shipped")
    parser.add_argument("--grafted", type=Path, help="the BYOR served model (default: the demo's cached build)")
    parser.add_argument("--imported", type=Path, help="the imported recogniser.onnx (default: found beside it)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="onnxruntime intra-op threads, all sides")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per phase and batch size")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every phase")
    parser.add_argument("--json", type=Path, help="write every measurement and the summary here")
    args = parser.parse_args()
    grafted = args.grafted or default_grafted()
    if grafted is None or not grafted.is_file():
        parser.error("no BYOR model: pass --grafted FILE.onnx or build the demo's (./scripts/demo.sh)")
    original = paths.resolve(args.original)
    # the demo's build keeps the imported recogniser in recogniser/; `eqface byor export` users often beside the model
    candidates = [args.imported] if args.imported else []
    candidates += [grafted.parent / "recogniser" / "recogniser.onnx", grafted.parent / "recogniser.onnx"]
    imported = next((c for c in candidates if c.is_file()), candidates[0])

    faces = pack_faces("shared:celeba_wild_subset_rgb112.npz", (112, 112), count=max(BATCHES))
    x_contract = contract.preprocess(list(faces), (112, 112))
    x_original = np.ascontiguousarray(ORIGINAL_NORMALISATION.apply(faces), dtype=np.float32)
    sessions = {
        "original ort": (onnx_session(original, args.threads, False), x_original, True),
        "grafted ort": (onnx_session(grafted, args.threads, False), x_contract, False),
    }
    if imported.is_file():
        sessions["imported ort"] = (onnx_session(imported, args.threads, False), x_original, False)
    run_onnx(sessions["grafted ort"][0], x_contract[:2])  # the file is the contract model

    import tritonclient.grpc as grpcclient

    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-byor-") as tmp:
        runtime = OnnxRuntimeSettings(threads=args.threads, spinning=False)
        write_model_repository(grafted, Path(tmp) / "repo", runtime=runtime)
        server = TritonServer(Path(tmp) / "repo").start()
        try:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            load_before = os.getloadavg()[0]
            for _ in range(args.rounds):
                r = {name: ort_rates(s, x, args.seconds, fixed) for name, (s, x, fixed) in sessions.items()}
                r["grafted triton"] = triton_rates(client, x_contract, args.seconds)
                rounds.append(r)
            load_after = os.getloadavg()[0]
            client.close()
        finally:
            server.stop()

    med = {name: {b: float(statistics.median(r[name][b] for r in rounds)) for b in BATCHES} for name in rounds[0]}
    print(
        f"BYOR serving cost: {original.name} vs its grafted model {grafted}; {args.threads} onnxruntime threads, "
        f"{os.cpu_count()} cores, median of {args.rounds} round(s) × {args.seconds:g} s; 1-min load average "
        f"{load_before:.1f} before, {load_after:.1f} after"
    )
    print(f"  {'images/s':<16} {'batch 1':>9} {'batch 32':>9}")
    for name, by_batch in med.items():
        print(f"  {name:<16} {by_batch[1]:>9.1f} {by_batch[32]:>9.1f}")
    ratios = {
        "graft: grafted ort / original ort": ("grafted ort", "original ort"),
        "graft: grafted ort / imported ort": ("grafted ort", "imported ort"),
        "Triton: grafted triton / grafted ort": ("grafted triton", "grafted ort"),
        "end to end: grafted triton / original ort": ("grafted triton", "original ort"),
    }
    summary = {}
    for label, (a, b) in ratios.items():
        if a in med and b in med:
            summary[label] = {bb: med[a][bb] / med[b][bb] for bb in BATCHES}
            print(f"  {label:<44} batch 1 {summary[label][1]:5.2f}   batch 32 {summary[label][32]:5.2f}")
    if args.json:
        data = {"args": {k: str(v) for k, v in vars(args).items()}, "median": med, "ratios": summary, "rounds": rounds}
        args.json.write_text(json.dumps(data, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
