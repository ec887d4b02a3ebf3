"""``eqface train``'s end-of-run summary: the held-out evaluation (:mod:`eqface.train.heldout`) as JSON and as text.

The quality histogram is the one thing the summary adds: it shows at a glance whether the branch discriminates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eqface.train.heldout import DEGRADATION_STRENGTH, HeldOutEvaluation


def quality_stats(q: np.ndarray) -> dict[str, Any]:
    hist, edges = np.histogram(q, bins=10, range=(0.0, 1.0))
    return {
        "n": int(q.size),
        "mean": float(q.mean()),
        "std": float(q.std()),
        "percentiles": {str(p): float(np.percentile(q, p)) for p in (5, 25, 50, 75, 95)},
        "histogram": {"edges": edges.round(2).tolist(), "counts": hist.tolist()},
    }


def summary_dict(ev: HeldOutEvaluation) -> dict[str, Any]:
    """The summary.json of a run."""
    summary: dict[str, Any] = {
        "identities": ev.identities,
        "images": ev.images,
        "verification": {
            "accuracy": ev.accuracy,
            "accuracy_std": ev.accuracy_std,
            "auc": ev.auc,
            "genuine_pairs": ev.genuine_pairs,
            "impostor_pairs": ev.impostor_pairs,
        },
        "quality": quality_stats(ev.quality["clean"]),
        "quality_by_condition": {kind: float(q.mean()) for kind, q in ev.quality.items()},
    }
    if ev.spearman is not None:
        summary["spearman_quality_vs_degradation"] = ev.spearman
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
