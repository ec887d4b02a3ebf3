"""``run_step2``: cache features of a face pack through an imported recogniser, train the quality branch, evaluate.

Writes into ``<import dir>/step2/``: ``features/{train,eval}/`` (the caches), ``quality_head.pt`` and ``step2.json``
(config, per-epoch history, wall times, held-out figures). Held-out identities are split off as everywhere in the
project (``data.eval_identities``: the last identities by label) and never reach training.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqface.byor.evaluation import held_out_report
from eqface.byor.features import FeatureSpec, cache_features
from eqface.byor.quality_training import (
    Step2Config,
    predict_quality,
    save_head,
    step2_cosines,
    train_quality_head,
)
from eqface.byor.recogniser import DEFAULT_EVAL_IDENTITIES, DEFAULT_PACK, Recogniser, write_json_atomic
from eqface.data.sources import FaceSource

STEP2_DIR = "step2"
HEAD_FILE = "quality_head.pt"
REPORT_FILE = "step2.json"


@dataclass(frozen=True)
class Step2Run:
    pack: str = DEFAULT_PACK
    eval_identities: int = DEFAULT_EVAL_IDENTITIES
    min_images_per_identity: int = 2
    features: FeatureSpec = FeatureSpec()
    train: Step2Config = Step2Config()
    threads: int = 0  # onnxruntime intra-op threads; 0: every core


def split_pack(source: FaceSource, run: Step2Run) -> tuple[FaceSource, FaceSource | None]:
    """The training and held-out faces of ``run.pack`` as Step 2 splits them (identities with too few faces dropped,
    then the last ``run.eval_identities`` held out); None when nothing is held out."""
    from eqface.data.sources import filter_identities, split_identities

    return split_identities(filter_identities(source, run.min_images_per_identity), run.eval_identities)


def run_step2(import_dir: str | Path, run: Step2Run = Step2Run()) -> dict:
    """Runs Step 2 on the imported recogniser in ``import_dir`` and returns the report written to ``step2.json``."""
    from eqface import paths
    from eqface.data.packs import load_pack

    import_dir = Path(import_dir)
    out = import_dir / STEP2_DIR
    recogniser = Recogniser(import_dir, threads=run.threads)
    train_source, eval_source = split_pack(load_pack(paths.resolve(run.pack)), run)
    t0 = time.perf_counter()
    train = cache_features(recogniser, train_source, out / "features" / "train", run.features)
    held = None
    if eval_source is not None:
        eval_spec = dataclasses.replace(run.features, views=1)
        held = cache_features(recogniser, eval_source, out / "features" / "eval", eval_spec)
    t_features = time.perf_counter() - t0
    cos = step2_cosines(train.embedding, train.labels, run.train)
    result = train_quality_head(cos, train.tap, train.labels, run.train)
    save_head(result.head, out / HEAD_FILE)
    train_quality = [float(predict_quality(result.head, train.tap[v][:2000]).mean()) for v in range(len(train.tap))]
    report = {
        "run": dataclasses.asdict(run),
        "train_faces": len(train_source),
        "train_identities": train_source.num_classes,
        "feature_seconds": t_features,
        "step2_seconds": result.seconds,
        "history": result.history,
        "train_mean_quality_by_view": train_quality,
    }
    if held is not None:
        quality = predict_quality(result.head, held.tap[0])
        report["held_out"] = held_out_report(held.embedding[0], quality, held.labels).to_dict()
    write_json_atomic(report, out / REPORT_FILE)
    return report


def held_out_qualities(import_dir: str | Path) -> np.ndarray:
    """Qualities of the cached held-out faces by the trained head (for reports and checks)."""
    from eqface.byor.quality_training import load_head

    out = Path(import_dir) / STEP2_DIR
    tap = np.load(out / "features" / "eval" / "tap.npy", mmap_mode="r")[0]
    return predict_quality(load_head(out / HEAD_FILE), tap)


def evaluate_pack(import_dir: str | Path, pack: str | Path, max_faces: int = 0) -> dict:
    """Held-out figures (``held_out_report``) of the imported recogniser and its trained head on every face of a pack.

    For packs the head never trained on (Yale, ORL); ``max_faces`` > 0 keeps an evenly spread subset.
    """
    from eqface import paths
    from eqface.byor.quality_training import load_head
    from eqface.contract import fit_to_size
    from eqface.data.packs import load_pack

    recogniser = Recogniser(import_dir)
    head = load_head(Path(import_dir) / STEP2_DIR / HEAD_FILE)
    source = load_pack(paths.resolve(pack))
    picks = np.arange(len(source))
    if 0 < max_faces < len(source):
        picks = np.unique(np.linspace(0, len(source) - 1, max_faces).astype(np.int64))
    size = recogniser.manifest.image_size
    embeddings, qualities = [], []
    for start in range(0, len(picks), 256):
        images = np.stack([fit_to_size(source.image(int(i)), size) for i in picks[start : start + 256]])
        raw, tap = recogniser.embed(images)
        embeddings.append(raw)
        qualities.append(predict_quality(head, tap.reshape(len(tap), -1)))
    report = held_out_report(np.concatenate(embeddings), np.concatenate(qualities), source.labels[picks])
    return {"pack": str(pack), **report.to_dict()}
