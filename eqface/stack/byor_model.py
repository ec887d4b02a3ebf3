"""The main job's model, built once by the bring-your-own-recogniser path and reused afterwards.

``eqface import-onnx`` → ``eqface byor step2`` → ``eqface byor export`` on a pretrained recogniser (default: the shared
``mobilefacenet_photo_analyze.onnx``) and a face pack (default: the CelebA pack), each step a child process whose
output is shown as it comes. The result lives in ``<runs>/byor-demo/<key>/`` where the key is a hash of the
recogniser's bytes, the pack's bytes and every setting below: a changed input builds a new folder, an unchanged one
is reused. ``build.json`` is written last, so a folder without it is an interrupted build and is resumed (Step 2's
feature cache is resumable). ``rebuild=True`` (``eqface stack demo --rebuild``) deletes the folder first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from eqface import paths

BUILD_DIR = "byor-demo"
BUILD_FILE = "build.json"
MODEL_FILE = "model.onnx"
IMPORT_DIR = "recogniser"


@dataclass(frozen=True)
class ByorBuild:
    """What the main job's model is built from; every field is part of the cache key."""

    recogniser: str = "shared:weights/mobilefacenet_photo_analyze.onnx"
    pack: str = "shared:celeba_wild_subset_rgb112.npz"  # eqface.byor.recogniser.DEFAULT_PACK
    mean: tuple[float, ...] = (127.0,)  # photo_analyze: (x − 127) / 128, RGB (issue 13)
    std: tuple[float, ...] = (128.0,)
    bgr: bool = False
    eval_identities: int = 40  # eqface.byor.recogniser.DEFAULT_EVAL_IDENTITIES: the demo's gallery comes from these
    views: int = 3
    epochs: int = 4


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(build: ByorBuild) -> str:
    """16 hex digits over the recogniser's and the pack's bytes and the settings; FileNotFoundError (naming the
    shared data folder) when an input is missing."""
    inputs = {
        "settings": asdict(build),
        "recogniser_sha256": _sha256(paths.resolve(build.recogniser)),
        "pack_sha256": _sha256(paths.resolve(build.pack)),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def build_dir(runs_dir: Path, build: ByorBuild) -> Path:
    return runs_dir / BUILD_DIR / cache_key(build)


def cached_model(runs_dir: Path, build: ByorBuild = ByorBuild()) -> Path | None:
    """The built model.onnx for exactly these inputs, None when it has not been built (completely) yet."""
    folder = build_dir(runs_dir, build)
    return folder / MODEL_FILE if (folder / BUILD_FILE).is_file() else None


def _commands(build: ByorBuild, folder: Path) -> list[tuple[str, list[str]]]:
    imported = folder / IMPORT_DIR
    mean = [str(v) for v in build.mean]
    std = [str(v) for v in build.std]
    recogniser = str(paths.resolve(build.recogniser))
    return [
        (
            "import",
            ["import-onnx", recogniser, "--out", str(imported), "--mean", *mean, "--std", *std]
            + (["--bgr"] if build.bgr else [])
            + ["--check-data", build.pack, "--eval-identities", str(build.eval_identities)],
        ),
        (
            "step2",
            ["byor", "step2", str(imported), "--data", build.pack, "--eval-identities", str(build.eval_identities)]
            + ["--views", str(build.views), "--epochs", str(build.epochs)],
        ),
        ("export", ["byor", "export", str(imported), "--out", str(folder / MODEL_FILE), "--parity-data", build.pack]),
    ]


def ensure_model(runs_dir: Path, build: ByorBuild = ByorBuild(), rebuild: bool = False, out=print) -> Path:
    """The BYOR model.onnx for ``build``: the cached one, else built now (minutes on 2 cores) by the three commands."""
    folder = build_dir(runs_dir, build)
    if rebuild and folder.exists():
        out(f"--rebuild: deleting {folder}")
        shutil.rmtree(folder)
    if (folder / BUILD_FILE).is_file():
        out(f"model: reusing the BYOR build {folder} (--rebuild builds it again)")
        out(held_out_line(folder))
        return folder / MODEL_FILE
    out(
        f"building the model by the bring-your-own-recogniser path into {folder} (once; a few minutes on 2 cores):\n"
        f"  recogniser {build.recogniser}, faces {build.pack} ({build.eval_identities} identities held out)"
    )
    folder.mkdir(parents=True, exist_ok=True)
    timings = {}
    for name, args in _commands(build, folder):
        if name == "import" and (folder / IMPORT_DIR / "recogniser.json").is_file():
            continue  # imported by an interrupted build
        out(f"\n$ eqface {' '.join(args)}")
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "eqface.cli", *args], check=True)
        timings[name] = round(time.monotonic() - start, 1)
    record = {"settings": asdict(build), "key": folder.name, "wall_s": timings}
    (folder / BUILD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    out(f"built {folder / MODEL_FILE} in {sum(timings.values()):.0f} s ({timings})")
    out(held_out_line(folder))
    return folder / MODEL_FILE


def held_out_line(folder: Path) -> str:
    """One line from Step 2's report: how the recogniser and its quality do on the held-out identities."""
    try:
        h = json.loads((folder / IMPORT_DIR / "step2" / "step2.json").read_text())["held_out"]
    except (FileNotFoundError, KeyError, ValueError):
        return "  (no Step 2 report with held-out figures in this build)"
    return (
        f"  held out ({h['identities']} identities, {h['faces']} faces, never seen by Step 2): verification accuracy "
        f"{h['accuracy_10fold']:.3f}, AUC {h['auc']:.4f}, TAR@FAR 1e-3 {h['tar_at_far_1e3']:.3f}; EDC pAUC quality "
        f"{h['pauc_quality']:.4f} vs embedding norm {h['pauc_embedding_norm']:.4f} vs random {h['pauc_random']:.4f}"
    )
