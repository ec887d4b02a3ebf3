"""E3: template aggregation, mean vs QWFA (Eq. 7) vs QWFAF (s_th 0.1/0.2/0.3), template-to-template verification.

Templates are video-like: several real images of one held-out CelebA identity, some frames hit by a seeded realistic
degradation (low resolution, blur, noise, occlusion). The table follows the paper's Table 2: methods as rows, TAR at
each FAR as columns, "n/r" where the FAR is not reachable with the impostor pairs available.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eqface.aggregation import mean_template, qwfa, qwfaf
from eqface.eval.pairs import every_pair
from eqface.eval.roc import (
    auc,
    format_tar_header,
    format_tar_row,
    max_false_accepts,
    roc_curve,
    tar_at_far,
)
from experiments.common import (
    BOOTSTRAP_REPS,
    Embeddings,
    ModelRef,
    Report,
    command_line,
    diff_verdict,
    embed_images,
    experiment_parser,
    fmt_far,
    held_out_source,
    load_model_ref,
    new_figure,
    paired_bootstrap_tar,
    source_images,
)
from experiments.degraded_frames import CLEAN, KINDS, draw_degradations, embed_frames, quality_by_condition

NAME = "e3_templates"
FARS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
S_THS = (0.1, 0.2, 0.3)
BASELINE = "mean (baseline)"
ORACLE = "oracle: mean of undegraded frames"


def methods() -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """Template feature from (frames' embeddings [T, D], qualities [T]); names as in the paper's tables."""
    out: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        BASELINE: lambda f, s: mean_template(f),
        "QWFA": qwfa,
    }
    for s_th in S_THS:
        out[f"QWFAF, s_th={s_th}"] = lambda f, s, t=s_th: qwfaf(f, s, t)
    return out


def draw_templates(labels: np.ndarray, frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Splits each identity's images (shuffled) into disjoint templates of ``frames`` images; leftovers unused.

    Returns:
        ``(members [M, frames] image indices, template_labels [M])``.
    """
    members, owners = [], []
    for ident in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == ident))
        n = len(idx) // frames
        if n:
            members.append(idx[: n * frames].reshape(n, frames))
            owners += [ident] * n
    if not members:
        raise ValueError(f"no identity has {frames} images")
    return np.concatenate(members), np.asarray(owners)


@dataclass(frozen=True)
class TemplateDraw:
    """One repeat: templates (frame indices [M, T]) with their owners, frame embeddings, qualities and conditions."""

    owners: np.ndarray  # [M]
    feats: np.ndarray  # [M, T, D]
    quals: np.ndarray  # [M, T]
    kinds: np.ndarray  # [M, T], CLEAN or an index into KINDS


def draw_repeat(
    ref: ModelRef,
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    clean: Embeddings,
    repeat: int,
    seed: int,
    frames: int,
    degrade_p: float,
    strength: tuple[float, float],
) -> TemplateDraw:
    rng = np.random.default_rng([seed, repeat])
    members, owners = draw_templates(labels, frames, rng)
    spec = draw_degradations(members.ravel(), degrade_p, strength, rng)
    e = embed_frames(ref, images, clean, spec, (seed, repeat))
    return TemplateDraw(
        owners,
        e.emb.reshape(*members.shape, -1).astype(np.float64),
        e.quality.reshape(members.shape),
        spec.kind.reshape(members.shape),
    )


def aggregate_templates(draw: TemplateDraw) -> dict[str, np.ndarray]:
    """Every method's template features [M, D] for one draw (plus the oracle)."""
    out = {m: np.stack([fn(f, q) for f, q in zip(draw.feats, draw.quals)]) for m, fn in methods().items()}
    out[ORACLE] = np.stack([_oracle(f, k) for f, k in zip(draw.feats, draw.kinds)])
    return out


def run_e3(
    ref: ModelRef,
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    out_dir: Path,
    *,
    frames: int = 5,
    degrade_p: float = 0.5,
    strength: tuple[float, float] = (0.4, 1.0),
    repeats: int = 5,
    seed: int = 0,
    fars: Sequence[float] = FARS,
    data_note: str = "",
    command: str | None = None,
) -> dict[str, Any]:
    report = Report(out_dir, "E3 — template aggregation: mean vs QWFA vs QWFAF")
    labels = np.asarray(labels)
    clean = embed_images(ref.net, images, ref.image_size)
    draws = [draw_repeat(ref, images, labels, clean, r, seed, frames, degrade_p, strength) for r in range(repeats)]
    scores: dict[str, list[np.ndarray]] = {}
    issame_all, per_repeat = [], []
    for draw in draws:
        a, b, same = every_pair(draw.owners)
        issame_all.append(same)
        rep = {}
        for m, t in aggregate_templates(draw).items():
            scores.setdefault(m, []).append(np.einsum("nd,nd->n", t[a], t[b]))
            rep[m] = tar_at_far(scores[m][-1], same, fars)
        per_repeat.append(rep)
    issame = np.concatenate(issame_all)
    pooled = {m: np.concatenate(v) for m, v in scores.items()}
    n_gen = int(issame.sum())
    results = {m: {"tar_at_far": tar_at_far(s, issame, fars), "auc": auc(s, issame)} for m, s in pooled.items()}
    for m, s in pooled.items():
        if m != BASELINE:
            results[m]["vs_mean_interval"] = paired_bootstrap_tar(pooled[BASELINE], s, issame, fars, seed=seed)
    report.figures.update(
        {
            "model": ref.describe(),
            "frames_per_template": frames,
            "degrade_p": degrade_p,
            "strength": strength,
            "kinds": KINDS,
            "repeats": repeats,
            "seed": seed,
            "templates": sum(len(d.owners) for d in draws),
            "genuine_pairs": n_gen,
            "impostor_pairs": int((~issame).sum()),
            "results": results,
            "per_repeat": per_repeat,
            **_quality_diagnostics(draws),
        }
    )
    report.add_models([ref])
    _write(report, ref, labels, pooled, issame, fars, data_note)
    report.write(command)
    return report.figures


def _quality_diagnostics(draws: Sequence[TemplateDraw]) -> dict[str, Any]:
    """Quality per frame condition, and how often QWFAF falls back to the mean or drops frames."""
    quals = np.concatenate([d.quals for d in draws])
    kinds = np.concatenate([d.kinds for d in draws])
    means = quals.mean(axis=1)
    return {
        "quality_by_condition": quality_by_condition(quals.ravel(), kinds.ravel()),
        "qwfaf_fallback_templates": {s_th: int((means < s_th).sum()) for s_th in S_THS},
        "qwfaf_mean_fraction_kept": {
            s_th: (float(np.mean(quals[means >= s_th] >= s_th)) if (means >= s_th).any() else None) for s_th in S_THS
        },
    }


def _oracle(feats: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Ground-truth filter (not available in practice): average only the undegraded frames, all if none is."""
    clean = kinds == CLEAN
    return mean_template(feats[clean] if clean.any() else feats)


def _write(
    report: Report,
    ref: ModelRef,
    labels: np.ndarray,
    pooled: dict[str, np.ndarray],
    issame: np.ndarray,
    fars: Sequence[float],
    data_note: str,
) -> None:
    f = report.figures
    report.section("Protocol")
    report.text(
        f"Model: {ref.describe()}; {ref.config_note()}. Data: {len(labels)} images of "
        f"{len(np.unique(labels))} identities. {data_note}",
        f"Templates: each repeat shuffles every identity's images (seeded `default_rng([seed, repeat])`, seed "
        f"{f['seed']}) and cuts them into disjoint templates of {f['frames_per_template']} frames (leftovers "
        f"unused). Each frame is degraded with probability {f['degrade_p']} by one of {', '.join(KINDS)} (uniform), "
        f"strength uniform in {list(f['strength'])} (`eqface.data.augment.degrade`, applied to the 112×96 network "
        "input with a per-frame seeded generator). Clean frames are embedded once and cached; degraded frames once "
        "per repeat.",
        f"Comparisons: every pair of templates within a repeat (never across repeats, which share images); "
        f"{f['repeats']} repeats pooled: {f['templates']} templates, {f['genuine_pairs']} genuine and "
        f"{f['impostor_pairs']} impostor template pairs. Cosine of the L2-normalised template features. A FAR is "
        "reachable only with ≥ 1/FAR impostor pairs ('n/r' otherwise); at a low FAR the threshold rests on the "
        "few highest impostor scores, so TAR there is noisy. Differences from the mean: paired bootstrap "
        f"({BOOTSTRAP_REPS} replicates; genuine and impostor pairs resampled separately, every method scored on the "
        "same draws), 95% percentile interval; pairs sharing frames are not independent, so the intervals are if "
        "anything too narrow, and one holding 0 is 'within noise'.",
        "Methods (`eqface.aggregation`): mean = plain average; QWFA = Σ s f / Σ s (Eq. 7); QWFAF = if mean(s) ≥ "
        "s_th, QWFA over the frames with s ≥ s_th, else the plain average. The oracle row uses the ground truth "
        "of which frames were degraded; it is an upper reference, not a method.",
    )
    report.section("Template-to-template verification (TAR %, pooled over repeats)")
    rows = [format_tar_row(m, report.figures["results"][m]["tar_at_far"]) for m in pooled]
    header = format_tar_header(fars, "method")
    table = "\n".join([header, *rows])
    report.lines += [table, ""]
    report.figures["table_markdown"] = table
    n_imp = f["impostor_pairs"]
    report.text(
        "False accepts the threshold allows at each FAR: "
        + ", ".join(f"{fmt_far(x)}: {max_false_accepts(x, n_imp) or 'n/r'}" for x in fars)
        + "."
    )
    report.table(["method", "AUC"], [[m, f"{r['auc']:.5f}"] for m, r in f["results"].items()])
    report.text(*_verdicts(f["results"], fars))
    report.section("Per-repeat spread")
    report.table(
        ["method", *(f"TAR@{fmt_far(x)} mean ± std over repeats" for x in fars)],
        [[m, *(_spread([rep[m][x] for rep in f["per_repeat"]]) for x in fars)] for m in pooled],
    )
    report.section("Does quality see the degradations?")
    report.table(
        ["frames", "n", "mean quality", "std"],
        [[k, v["n"], f"{v['mean']:.3f}", f"{v['std']:.3f}"] for k, v in f["quality_by_condition"].items()],
    )
    report.table(
        ["QWFAF", "templates that fell back to the plain mean (mean(s) < s_th)", "frames kept by the others (mean)"],
        [
            [
                f"s_th={s}",
                f"{f['qwfaf_fallback_templates'][s]} of {f['templates']}",
                _frac(f["qwfaf_mean_fraction_kept"][s]),
            ]
            for s in S_THS
        ],
    )
    report.image(_roc_figure(pooled, issame), "roc_templates.png", "Template-to-template ROC, pooled over repeats")


def _frac(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _spread(values: list[float | None]) -> str:
    if any(v is None for v in values):
        return "n/r"
    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}"


def _verdicts(results: dict[str, Any], fars: Sequence[float]) -> list[str]:
    base = results[BASELINE]
    lines = []
    for m, r in results.items():
        if m in (BASELINE, ORACLE):
            continue
        parts = [
            f"@{fmt_far(far)} "
            + diff_verdict(r["tar_at_far"][far] - base["tar_at_far"][far], r["vs_mean_interval"][far])
            for far in fars
            if base["tar_at_far"][far] is not None
        ]
        lines.append(f"- **{m}** vs mean: " + "; ".join(parts) + f"; AUC {r['auc'] - base['auc']:+.5f}.")
    return lines


def _roc_figure(pooled: dict[str, np.ndarray], issame: np.ndarray):
    fig = new_figure(6.5, 4.5)
    ax = fig.add_subplot()
    for i, (m, s) in enumerate(pooled.items()):
        c = roc_curve(s, issame)
        ax.plot(np.maximum(c.far, 1e-6), c.tar, label=m, color=f"C{i}", ls="--" if m == ORACLE else "-")
    ax.set(xscale="log", xlim=(1e-5, 1), xlabel="FAR", ylabel="TAR", title="Template verification ROC")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, NAME, model_help="final model (model.pt)")
    p.add_argument("--frames", type=int, default=5, help="frames per template")
    p.add_argument("--degrade-p", type=float, default=0.5, help="probability that a frame is degraded")
    p.add_argument("--repeats", type=int, default=5, help="independent template/degradation draws, pooled")
    p.add_argument("--seed", type=int, default=0, help="seed of the template and degradation draws")
    args = p.parse_args(argv)
    ref = load_model_ref(args.model, "final model.pt")
    held = held_out_source(ref, args.data_dir)
    note = (
        "The 40 CelebA identities held out by the model's own training config (`data.eval_identities`, the "
        "last labels of `celeba_wild_subset_rgb112.npz`); never seen in training."
    )
    figures = run_e3(
        ref,
        source_images(held),
        held.labels,
        args.out,
        frames=args.frames,
        degrade_p=args.degrade_p,
        repeats=args.repeats,
        seed=args.seed,
        data_note=note,
        command=command_line(f"experiments.{NAME}"),
    )
    print((args.out / "report.md").read_text())
    print(f"wrote {args.out} in {figures['runtime_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
