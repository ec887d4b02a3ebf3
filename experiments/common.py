"""Plumbing shared by the experiments: models with their provenance, one-pass embedding, data, and report writing.

Every image set is embedded once per model (embedding, quality and the pre-normalisation norm come from the same
forward pass) and kept in memory; the experiments only slice these arrays.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from eqface import contract, paths
from eqface.config import EQFaceConfig, ModelConfig, config_from_dict, merge
from eqface.data.sources import FaceSource
from eqface.models import EQFaceNet
from eqface.train import checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "experiments" / "results"
DEFAULT_RUN = REPO_ROOT / "runs" / "mfn-celeba"


@dataclass(frozen=True)
class ModelRef:
    """A trained network and where it came from (for the report's protocol section)."""

    name: str
    path: Path
    net: EQFaceNet
    model_cfg: ModelConfig
    config: dict[str, Any]  # the resolved training config stored in the checkpoint ({} when absent)
    step: str
    sha256: str

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model_cfg.image_size)  # type: ignore[return-value]

    def describe(self) -> str:
        rel = _relative(self.path)
        return f"`{rel}` ({self.step}, sha256 {self.sha256[:12]}, backbone {self.model_cfg.backbone})"

    def config_note(self) -> str:
        """The training config in one line (the full config is in results.json under ``model_configs``)."""
        train, data = self.config.get("train", {}), self.config.get("data", {})
        if not train:
            return "(no training config stored)"
        epochs = "/".join(str(train.get(f"step{k}", {}).get("epochs")) for k in (1, 2, 3))
        return (
            f"trained on {Path(str(data.get('path', ''))).name or data.get('source')} minus its last "
            f"{data.get('eval_identities')} identities, seed {train.get('seed')}, epochs step1/2/3 {epochs}, "
            f"step3_quality {train.get('step3_quality')}, iterations {train.get('iterations')}"
        )


def experiment_parser(description: str | None, name: str, model_help: str | None = None) -> argparse.ArgumentParser:
    """The options every experiment shares: --data-dir, --out and (when ``model_help``) --model."""
    p = argparse.ArgumentParser(description=description)
    if model_help is not None:
        p.add_argument("--model", type=Path, default=DEFAULT_RUN / "model.pt", help=model_help)
    shared = paths.shared_data_dir()  # None on a machine without the shared data: then --data-dir is required
    p.add_argument(
        "--data-dir", type=Path, default=shared, required=shared is None, help="folder of the shared face packs"
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR / name, help="output folder")
    return p


def _relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model_ref(path: str | Path, name: str) -> ModelRef:
    """Loads a final.pt/model.pt with its stored training config and step."""
    path = Path(path)
    net, model_cfg = checkpoint.load_model(path)
    state = checkpoint.load(path)
    config = json.loads(state["config"]) if "config" in state else {}
    return ModelRef(name, path, net, model_cfg, config, str(state.get("step", "?")), file_sha256(path))


def training_config(ref: ModelRef, data_dir: Path | None = None) -> EQFaceConfig:
    """The model's training config; with ``data_dir`` the data pack is looked up there (same file name)."""
    cfg = config_from_dict(ref.config)
    if data_dir is not None and cfg.data.path:
        name = Path(cfg.data.path.removeprefix(paths.PREFIX)).name  # a plain path or a shared:<file> preset path
        cfg = merge(cfg, {"data": {"path": str(Path(data_dir) / name)}})
    return cfg


def held_out_source(ref: ModelRef, data_dir: Path) -> FaceSource:
    """The identities the model's training run held out (``data.eval_identities``), rebuilt from its own config."""
    from eqface.train.plan import load_training_data

    _, held_out = load_training_data(training_config(ref, data_dir))
    if held_out is None:
        raise ValueError(f"{ref.path}: its training config holds out no identities (data.eval_identities = 0)")
    return held_out


def flat_config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two nested config dicts."""
    diff: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diff.update(flat_config_diff(va, vb, f"{prefix}{key}."))
        elif va != vb:
            diff[f"{prefix}{key}"] = (va, vb)
    return diff


@dataclass(frozen=True)
class Embeddings:
    """One forward pass per image: L2-normalised embedding, quality, and the embedding norm before normalisation."""

    emb: np.ndarray  # [N, D] float32, unit rows
    quality: np.ndarray  # [N] in [0, 1]
    raw_norm: np.ndarray  # [N]

    def take(self, idx: np.ndarray) -> Embeddings:
        return Embeddings(self.emb[idx], self.quality[idx], self.raw_norm[idx])


@torch.no_grad()
def embed_images(
    net: EQFaceNet, images: Sequence[np.ndarray], image_size: tuple[int, int], batch_size: int = 64
) -> Embeddings:
    """Embeds uint8 images (grey or RGB, any size: fitted as in training's ``embed_source``) in eval mode."""
    net.eval()
    embs, quals, norms = [], [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(contract.preprocess(images[start : start + batch_size], image_size))
        raw, fmap = net.embed_and_map(x)
        quals.append(net.quality(fmap).squeeze(1).numpy())
        norm = raw.norm(dim=1)
        norms.append(norm.numpy())
        embs.append((raw / norm.clamp_min(1e-12)[:, None]).numpy())
    if not embs:
        raise ValueError("no images to embed")
    return Embeddings(
        np.concatenate(embs).astype(np.float32),
        np.concatenate(quals).astype(np.float64),
        np.concatenate(norms).astype(np.float64),
    )


def source_images(source: FaceSource) -> list[np.ndarray]:
    return [source.image(i) for i in range(len(source))]


def binomial_se(p: float | None, n: int) -> float | None:
    """Standard error of a rate p measured on n trials (a rough noise scale for TAR differences)."""
    if p is None or n <= 0:
        return None
    return math.sqrt(max(p * (1 - p), 0.0) / n)


BOOTSTRAP_REPS = 200


def paired_bootstrap_tar(
    score_a: np.ndarray,
    score_b: np.ndarray,
    issame: np.ndarray,
    fars: Sequence[float],
    reps: int | None = None,
    seed: int = 0,
) -> dict[float, tuple[float, float] | None]:
    """95% percentile interval of TAR_b − TAR_a at each FAR, both arms scored on the same resampled pairs.

    Genuine and impostor pairs are resampled with replacement separately (so each replicate keeps the counts, and the
    threshold moves with the impostors it rests on). Pairs that share images are not independent, so the interval is
    on the narrow side; a difference whose interval holds 0 is not evidence. None where a FAR is not reachable.
    ``reps`` defaults to the module's BOOTSTRAP_REPS (read at call time, so a test can lower it).
    """
    from eqface.eval.roc import tar_at_far

    reps = reps or BOOTSTRAP_REPS
    issame = np.asarray(issame, dtype=bool)
    rng = np.random.default_rng(seed)
    gen, imp = np.flatnonzero(issame), np.flatnonzero(~issame)
    diffs: dict[float, list[float]] = {far: [] for far in fars}
    for _ in range(reps):
        idx = np.concatenate([rng.choice(gen, len(gen)), rng.choice(imp, len(imp))])
        ta = tar_at_far(score_a[idx], issame[idx], fars)
        tb = tar_at_far(score_b[idx], issame[idx], fars)
        for far in fars:
            if ta[far] is not None and tb[far] is not None:
                diffs[far].append(tb[far] - ta[far])
    return {
        far: (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))) if d else None for far, d in diffs.items()
    }


def diff_verdict(diff: float, interval: tuple[float, float] | None) -> str:
    """'+1.23 pts [−0.40, +2.80]: within noise' from a TAR difference and its bootstrap interval (rates in [0, 1])."""
    if interval is None:
        return f"{100 * diff:+.2f} pts"
    lo, hi = interval
    tag = (
        "equal"
        if diff == 0 and lo == hi == 0
        else "within noise"
        if lo <= 0 <= hi
        else ("better" if lo > 0 else "worse")
    )
    return f"{100 * diff:+.2f} pts [95% CI {100 * lo:+.2f}, {100 * hi:+.2f}]: {tag}"


def fmt_far(far: float) -> str:
    return f"{far:.0e}".replace("e-0", "e-")


def fmt_pct(x: float | None, digits: int = 2) -> str:
    return "n/r" if x is None else f"{100 * x:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, tuples, Paths and float keys → plain JSON; NaN/inf become None."""
    if isinstance(obj, dict):
        return {f"{k:g}" if isinstance(k, float) else str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return _relative(obj)
    return obj


def command_line(module: str) -> str:
    """How this run was started, for the report (the venv's python, as the README uses it)."""
    return " ".join([".venv/bin/python", "-m", module, *map(shlex.quote, sys.argv[1:])])


def git_head() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class Report:
    """Collects one experiment's markdown, figures and numbers; ``write`` puts them into ``out_dir``."""

    out_dir: Path
    title: str
    lines: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    pngs: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def add_models(self, models: Sequence[ModelRef]) -> None:
        """Records each model's file, hash and full training config in results.json."""
        self.figures["model_files"] = {m.name: m.describe() for m in models}
        self.figures["model_configs"] = {m.name: m.config for m in models}

    def section(self, title: str) -> None:
        self.lines += ["", f"## {title}", ""]

    def text(self, *paragraphs: str) -> None:
        for p in paragraphs:
            self.lines += [p, ""]

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        table = markdown_table(headers, rows)
        self.lines += [table, ""]
        return table

    def image(self, fig: Figure, filename: str, caption: str, dpi: int = 110) -> Path:
        path = self.out_dir / filename
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        self.pngs.append(filename)
        self.lines += [f"![{caption}]({filename})", "", f"*{caption}*", ""]
        return path

    def write(self, command: str | None = None) -> float:
        """Writes report.md and results.json; returns the runtime in seconds (also written to both)."""
        runtime = time.perf_counter() - self.started
        env = environment()
        self.figures["runtime_s"] = round(runtime, 1)
        self.figures["environment"] = env
        self.figures["pngs"] = self.pngs
        command = command or "(called from Python, not from the command line)"
        head = [
            f"# {self.title}",
            "",
            f"Command: `{command}`",
            "",
            f"Runtime: **{runtime:.0f} s** on {env['cpus']} CPU core(s) shared with other jobs "
            f"(load average at the end {env['load_average']}); torch {env['torch']} with "
            f"{env['torch_threads']} thread(s); code at git {env['git_head']} (working tree may hold others' "
            "uncommitted changes outside experiments/).",
        ]
        (self.out_dir / "report.md").write_text("\n".join(head + self.lines).rstrip() + "\n")
        (self.out_dir / "results.json").write_text(json.dumps(jsonable(self.figures), indent=1) + "\n")
        return runtime


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "git_head": git_head(),
    }


def new_figure(width: float = 7.0, height: float = 4.5, **kwargs: Any) -> Figure:
    """A matplotlib Figure without pyplot (no global backend state)."""
    return Figure(figsize=(width, height), **kwargs)
