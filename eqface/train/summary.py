"""The end-of-training report: verification accuracy on held-out identities and how quality is distributed.

Quality is reported on the held-out faces as they are and under each realistic degradation at a fixed strength, so
one can see at a glance whether the branch discriminates (the failure mode of the official code is s ≈ 1 everywhere).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from eqface import contract
from eqface.data.augment import DEGRADATIONS, degrade
from eqface.data.sources import ArraySource, FaceSource
from eqface.eval.pairs import cosine_scores, make_pairs
from eqface.eval.roc import auc
from eqface.eval.verification import kfold_accuracy
from eqface.models import EQFaceNet
from eqface.train.trainer import embed_source

DEGRADATION_STRENGTH = 0.7
MAX_PAIRS = 3000


def quality_stats(q: np.ndarray) -> dict[str, Any]:
    hist, edges = np.histogram(q, bins=10, range=(0.0, 1.0))
    return {
        "n": int(q.size),
        "mean": float(q.mean()),
        "std": float(q.std()),
        "percentiles": {str(p): float(np.percentile(q, p)) for p in (5, 25, 50, 75, 95)},
        "histogram": {"edges": edges.round(2).tolist(), "counts": hist.tolist()},
    }


def verification(emb: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    counts = np.bincount(labels)
    n_genuine = int(min(MAX_PAIRS, (counts * (counts - 1) // 2).sum()))
    n_total = len(labels) * (len(labels) - 1) // 2
    n_impostor = int(min(max(n_genuine, 10), n_total - n_genuine, MAX_PAIRS))
    a, b, same = make_pairs(labels, n_genuine, n_impostor, np.random.default_rng(seed))
    scores = cosine_scores(emb[a], emb[b])
    result = kfold_accuracy(scores, same)
    return {
        "accuracy": result.mean,
        "accuracy_std": result.std,
        "auc": auc(scores, same),
        "genuine_pairs": n_genuine,
        "impostor_pairs": n_impostor,
    }


def degraded_copy(source: FaceSource, image_size: tuple[int, int], kind: str, seed: int) -> ArraySource:
    images = np.stack(
        [
            degrade(
                contract.fit_to_size(source.image(i), image_size),
                kind,
                DEGRADATION_STRENGTH,
                np.random.default_rng([seed, i]),
            )
            for i in range(len(source))
        ]
    )
    return ArraySource(images, source.labels)


def summarize(
    net: EQFaceNet, held_out: FaceSource, image_size: tuple[int, int], device: torch.device, seed: int = 0
) -> dict[str, Any]:
    emb, q = embed_source(net, held_out, image_size, device, desc="held-out faces")
    summary: dict[str, Any] = {
        "identities": held_out.num_classes,
        "images": len(held_out),
        "verification": verification(emb, held_out.labels, seed),
        "quality": quality_stats(q),
        "quality_by_condition": {"clean": float(q.mean())},
    }
    for kind in DEGRADATIONS:
        _, qd = embed_source(net, degraded_copy(held_out, image_size, kind, seed), image_size, device, desc=kind)
        summary["quality_by_condition"][kind] = float(qd.mean())
    if "degradation" in held_out.extras:
        rho = spearmanr(q, held_out.extras["degradation"]).statistic
        summary["spearman_quality_vs_degradation"] = float(rho)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    v, q = s["verification"], s["quality"]
    lines = [
        f"held-out: {s['identities']} identities, {s['images']} images",
        f"verification accuracy (10-fold): {100 * v['accuracy']:.2f}% ± {100 * v['accuracy_std']:.2f}  "
        f"AUC {v['auc']:.4f}  ({v['genuine_pairs']} genuine / {v['impostor_pairs']} impostor pairs)",
        f"quality: mean {q['mean']:.3f}  std {q['std']:.3f}  "
        + "  ".join(f"p{k} {v_:.3f}" for k, v_ in q["percentiles"].items()),
        "quality histogram:",
    ]
    counts, edges = q["histogram"]["counts"], q["histogram"]["edges"]
    peak = max(max(counts), 1)
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        lines.append(f"  [{lo:.1f}, {hi:.1f}) {'#' * round(40 * c / peak):<40} {c}")
    lines.append(f"mean quality by condition (strength {DEGRADATION_STRENGTH}):")
    lines += [f"  {k:<11} {v_:.3f}" for k, v_ in s["quality_by_condition"].items()]
    if "spearman_quality_vs_degradation" in s:
        lines.append(f"Spearman(quality, degradation strength): {s['spearman_quality_vs_degradation']:+.3f}")
    return "\n".join(lines)
