"""E4: progressive QWFA (Eq. 8–9) for real-time video recognition, the paper's §5.3 protocol scaled down.

Reference set: single images of enrolled identities. Query set: other images of the same identities plus distractor
identities, each query identity's images forming a "video" (shuffled order, some frames degraded). Every reference
image is compared with every query frame; a query frame is represented either by itself (baseline, no fusion) or by
the progressive QWFA template of its video up to and including that frame, for f_th × s_th in a sweep.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eqface.aggregation import PAPER_F_TH, PAPER_S_TH, ProgressiveQWFA
from eqface.eval.pairs import all_pairs
from eqface.eval.roc import auc, format_tar_header, format_tar_row, roc_curve, tar_at_far
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
from experiments.degraded_frames import KINDS, draw_degradations, embed_frames, quality_by_condition

NAME = "e4_progressive"
F_THS = (0.3, 0.5, 0.7)
S_THS = (0.1, 0.2, 0.3)
FARS = (1e-4, 1e-3, 1e-2, 1e-1)
SELECT_FAR = 1e-3  # the best (f_th, s_th) is chosen by TAR at this FAR, ties by AUC
BASELINE = "baseline (no fusion)"
NO_GATES = "Eq. 7 running QWFA (no gates)"
RUNNING_MEAN = "running mean (no quality, no gates)"
STRICT = f"f_th={PAPER_F_TH}, s_th={PAPER_S_TH}, paper-strict seed"


def sweep_name(f_th: float, s_th: float) -> str:
    return f"f_th={f_th}, s_th={s_th}"


def split_reference_query(
    labels: np.ndarray, refs: int, queries: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half the identities (shuffled) are enrolled, the others are distractors.

    Enrolled: up to ``refs`` reference images and up to ``queries`` other images as queries (each needs ≥ 2 images;
    the images are split so both sides get at least one). Distractors: up to ``queries`` images as queries.

    Returns:
        ``(reference indices, query indices grouped by identity in video order, enrolled identities)``.
    """
    ids = rng.permutation(np.unique(labels))
    enrolled, distractors = ids[: len(ids) // 2], ids[len(ids) // 2 :]
    reference, query = [], []
    for ident in enrolled:
        idx = rng.permutation(np.flatnonzero(labels == ident))
        n_ref = min(refs, len(idx) // 2)
        if n_ref == 0:
            continue
        reference.append(idx[:n_ref])
        query.append(idx[n_ref : n_ref + queries])
    for ident in distractors:
        query.append(rng.permutation(np.flatnonzero(labels == ident))[:queries])
    return np.concatenate(reference), np.concatenate(query), enrolled


def query_templates(
    emb: np.ndarray, quality: np.ndarray, video: np.ndarray, f_th: float, s_th: float, strict: bool = False
) -> tuple[np.ndarray, float]:
    """The progressive template after each frame, video by video (``video`` labels consecutive runs of frames).

    Returns:
        ``(templates [N, D], fraction of non-first frames merged into their template)``.
    """
    out = np.empty_like(emb)
    merged = later = 0
    starts = np.flatnonzero(np.r_[True, video[1:] != video[:-1]])
    for lo, hi in zip(starts, [*starts[1:], len(video)]):
        state = ProgressiveQWFA(f_th=f_th, s_th=s_th, reseed_low_quality=not strict)
        for k in range(lo, hi):
            decision = state.update(emb[k], float(quality[k])).decision
            out[k] = state.template
            if k > lo:
                later += 1
                merged += decision.merged
    return out, (merged / later if later else 0.0)


def variants() -> dict[str, tuple[float, float, bool, bool]]:
    """name → (f_th, s_th, use quality, strict seed). Gates at -2/-1 never fire (cosine ≥ -1, quality ≥ 0)."""
    out = {sweep_name(f, s): (f, s, True, False) for f, s in itertools.product(F_THS, S_THS)}
    out[NO_GATES] = (-2.0, -1.0, True, False)
    out[RUNNING_MEAN] = (-2.0, -1.0, False, False)
    out[STRICT] = (PAPER_F_TH, PAPER_S_TH, True, True)
    return out


@dataclass(frozen=True)
class QueryDraw:
    """One repeat: reference images, query frames in video order (with their embeddings) and the conditions."""

    ref_idx: np.ndarray  # [R] image indices
    query_idx: np.ndarray  # [Q] image indices, grouped by identity
    enrolled: np.ndarray  # identities with references
    kind: np.ndarray  # [Q] CLEAN or an index into KINDS
    query: Embeddings  # [Q] frames as the camera gave them (degraded or not)


def draw_repeat(
    ref: ModelRef,
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    clean: Embeddings,
    repeat: int,
    seed: int,
    refs: int,
    queries: int,
    degrade_p: float,
    strength: tuple[float, float],
) -> QueryDraw:
    rng = np.random.default_rng([seed, repeat])
    ref_idx, query_idx, enrolled = split_reference_query(labels, refs, queries, rng)
    spec = draw_degradations(query_idx, degrade_p, strength, rng)
    return QueryDraw(ref_idx, query_idx, enrolled, spec.kind, embed_frames(ref, images, clean, spec, (seed, repeat)))


def query_representations(draw: QueryDraw, video: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Each row's query features [Q, D] and, for the progressive ones, the fraction of later frames merged."""
    emb = draw.query.emb.astype(np.float64)
    feats, merged = {BASELINE: emb}, {}
    for n, (f_th, s_th, use_q, strict) in variants().items():
        s = draw.query.quality if use_q else np.ones_like(draw.query.quality)
        feats[n], merged[n] = query_templates(emb, s, video, f_th, s_th, strict)
    return feats, merged


def run_e4(
    ref: ModelRef,
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    out_dir: Path,
    *,
    refs: int = 10,
    queries: int = 10,
    degrade_p: float = 0.5,
    strength: tuple[float, float] = (0.4, 1.0),
    repeats: int = 5,
    seed: int = 0,
    fars: Sequence[float] = FARS,
    select_far: float = SELECT_FAR,
    data_note: str = "",
    command: str | None = None,
) -> dict[str, Any]:
    report = Report(out_dir, "E4 — progressive QWFA (Eq. 8–9): reference/query ROC, f_th × s_th sweep")
    labels = np.asarray(labels)
    clean = embed_images(ref.net, images, ref.image_size)
    draws = [
        draw_repeat(ref, images, labels, clean, r, seed, refs, queries, degrade_p, strength) for r in range(repeats)
    ]
    scores: dict[str, list[np.ndarray]] = {}
    merged: dict[str, list[float]] = {}
    issame_all, per_repeat = [], []
    for draw in draws:
        video = labels[draw.query_idx]
        _, _, same = all_pairs(labels[draw.ref_idx], video)
        issame_all.append(same)
        feats, fractions = query_representations(draw, video)
        for n, fraction in fractions.items():
            merged.setdefault(n, []).append(fraction)
        ref_emb = clean.emb[draw.ref_idx].astype(np.float64)
        for n, t in feats.items():
            scores.setdefault(n, []).append((ref_emb @ t.T).ravel())
        per_repeat.append({n: tar_at_far(v[-1], same, [select_far])[select_far] for n, v in scores.items()})
    issame = np.concatenate(issame_all)
    pooled = {n: np.concatenate(v) for n, v in scores.items()}
    results = {n: {"tar_at_far": tar_at_far(s, issame, fars), "auc": auc(s, issame)} for n, s in pooled.items()}
    best_tar, best_auc = _best(results, select_far)
    comparisons = {}
    for a, b in _comparison_pairs(best_tar):
        comparisons[f"{b} vs {a}"] = {
            "tar_diff": {far: _diff(results[b]["tar_at_far"][far], results[a]["tar_at_far"][far]) for far in fars},
            "interval": paired_bootstrap_tar(pooled[a], pooled[b], issame, fars, seed=seed),
            "auc_diff": results[b]["auc"] - results[a]["auc"],
        }
    report.figures.update(
        {
            "model": ref.describe(),
            "refs_per_id": refs,
            "queries_per_id": queries,
            "degrade_p": degrade_p,
            "strength": strength,
            "kinds": KINDS,
            "repeats": repeats,
            "seed": seed,
            "counts": _counts(draws, labels),
            "genuine_pairs": int(issame.sum()),
            "impostor_pairs": int((~issame).sum()),
            "results": results,
            "per_repeat_tar_at_select_far": per_repeat,
            "select_far": select_far,
            "best_by_tar": best_tar,
            "best_by_auc": best_auc,
            "comparisons": comparisons,
            "bootstrap_reps": BOOTSTRAP_REPS,
            "merged_fraction": {n: float(np.mean(v)) for n, v in merged.items()},
            "quality_by_condition": quality_by_condition(
                np.concatenate([d.query.quality for d in draws]), np.concatenate([d.kind for d in draws])
            ),
        }
    )
    report.add_models([ref])
    _write(report, ref, labels, pooled, issame, fars, data_note)
    report.write(command)
    return report.figures


def _counts(draws: Sequence[QueryDraw], labels: np.ndarray) -> dict[str, int]:
    """Totals over repeats: reference images, query frames, enrolled and distractor identities."""
    distractors = sum(len(np.setdiff1d(np.unique(labels[d.query_idx]), d.enrolled)) for d in draws)
    return {
        "reference": sum(len(d.ref_idx) for d in draws),
        "query": sum(len(d.query_idx) for d in draws),
        "enrolled_ids": sum(len(d.enrolled) for d in draws),
        "distractor_ids": int(distractors),
    }


def _comparison_pairs(best: str) -> list[tuple[str, str]]:
    """(a, b) pairs reported as b − a: the best pair against no fusion and against ungated Eq. 7, the paper's pair
    against the best, quality weighting within ungated fusion, and the strict seed against the re-seeding one."""
    paper = sweep_name(PAPER_F_TH, PAPER_S_TH)
    pairs = [(BASELINE, best), (NO_GATES, best), (best, paper), (RUNNING_MEAN, NO_GATES), (paper, STRICT)]
    return [(a, b) for a, b in pairs if a != b]


def _diff(b: float | None, a: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _best(results: dict[str, Any], far: float) -> tuple[str, str]:
    """Best swept (f_th, s_th) pair by TAR at ``far`` (ties: AUC) and by AUC."""
    swept = [sweep_name(f, s) for f, s in itertools.product(F_THS, S_THS)]
    by_tar = max(swept, key=lambda n: (results[n]["tar_at_far"][far] or 0.0, results[n]["auc"]))
    by_auc = max(swept, key=lambda n: results[n]["auc"])
    return by_tar, by_auc


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
    c = f["counts"]
    report.section("Protocol (what is compared with what)")
    report.text(
        f"Model: {ref.describe()}; {ref.config_note()}. Data: {len(labels)} images of "
        f"{len(np.unique(labels))} identities. {data_note}",
        f"Each of {f['repeats']} repeats (seeded `default_rng([seed, repeat])`, seed {f['seed']}) shuffles the "
        f"identities: half are enrolled, half are distractors. An enrolled identity gives up to {f['refs_per_id']} "
        f"reference images and up to {f['queries_per_id']} other (disjoint) images as its query video; a distractor "
        f"gives up to {f['queries_per_id']} query images and no reference. Query frames are shuffled, and each is "
        f"degraded with probability {f['degrade_p']} by one of {', '.join(KINDS)} at strength uniform in "
        f"{list(f['strength'])}; reference images stay as they are. Totals over repeats: {c['reference']} reference "
        f"images, {c['query']} query frames ({c['enrolled_ids']} enrolled and {c['distractor_ids']} distractor "
        "identity draws).",
        "Comparison: every reference image (its own embedding) against every query frame, the paper's reference × "
        "query similarity matrix. The query frame i of a video is represented by: **baseline** — its own embedding "
        "f_i (no fusion); **f_th, s_th** — the progressive QWFA template F_i after frames 1..i of its video "
        "(Eq. 8–9, `eqface.aggregation.ProgressiveQWFA`, the state behind `progressive_templates`; a low-quality "
        "first frame is replaced by the first later frame above s_th, the library's default); **paper-strict "
        "seed** — the same at the paper's best pair but the first frame is kept whatever its quality (as Eq. 8 is "
        "written); **Eq. 7 running QWFA** — gates "
        "off, the quality-weighted mean of frames 1..i; **running mean** — gates off and all s = 1. So every row "
        "scores the same pairs; only the query representation changes.",
        f"Pairs pooled over repeats: {f['genuine_pairs']} genuine, {f['impostor_pairs']} impostor. Best swept "
        f"pair: highest TAR at FAR {fmt_far(f['select_far'])}, ties broken by AUC; also the best by AUC.",
    )
    report.section("ROC operating points (TAR %, pooled)")
    table = "\n".join(
        [
            format_tar_header(fars, "query representation"),
            *(format_tar_row(n, f["results"][n]["tar_at_far"]) for n in pooled),
        ]
    )
    report.lines += [table, ""]
    report.figures["table_markdown"] = table
    report.table(
        [
            "query representation",
            "AUC",
            "frames merged (of non-first)",
            f"TAR@{fmt_far(f['select_far'])} per repeat, mean ± std",
        ],
        [
            [
                n,
                f"{f['results'][n]['auc']:.5f}",
                "–" if n == BASELINE else f"{100 * f['merged_fraction'][n]:.0f}%",
                _spread([rep[n] for rep in f["per_repeat_tar_at_select_far"]]),
            ]
            for n in pooled
        ],
    )
    report.section("Best pair")
    report.text(*_verdicts(f, report.figures["select_far"]))
    report.section("Quality of the query frames")
    report.table(
        ["frames", "n", "mean quality", "std"],
        [[k, v["n"], f"{v['mean']:.3f}", f"{v['std']:.3f}"] for k, v in f["quality_by_condition"].items()],
    )
    report.image(
        _roc_figure(pooled, issame),
        "roc_progressive.png",
        "ROC of reference × query comparisons (cf. the paper's Fig. 5): baseline without fusion and "
        "progressive QWFA for each (f_th, s_th)",
    )


def _spread(values: list[float | None]) -> str:
    if any(v is None for v in values):
        return "n/r"
    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}"


def _verdicts(f: dict[str, Any], far: float) -> list[str]:
    res = f["results"]
    base = res[BASELINE]
    lines = []
    for label, name in (("by TAR@" + fmt_far(far), f["best_by_tar"]), ("by AUC", f["best_by_auc"])):
        r = res[name]
        lines.append(
            f"- Best swept pair {label}: **{name}** — TAR@{fmt_far(far)} {_pct(r['tar_at_far'][far])}% "
            f"(baseline {_pct(base['tar_at_far'][far])}%), AUC {r['auc']:.5f} (baseline {base['auc']:.5f})."
        )
    lines.append("Paired differences (b − a; 95% bootstrap interval over pairs, both scored on the same draws):")
    for name, c in f["comparisons"].items():
        parts = [
            f"@{fmt_far(x)} {diff_verdict(d, c['interval'][x])}" for x, d in c["tar_diff"].items() if d is not None
        ]
        lines.append(f"- **{name}**: " + "; ".join(parts) + f"; AUC {c['auc_diff']:+.5f}.")
    return lines


def _pct(x: float | None) -> str:
    return "n/r" if x is None else f"{100 * x:.2f}"


def _roc_figure(pooled: dict[str, np.ndarray], issame: np.ndarray):
    from matplotlib import colormaps

    palette = colormaps["tab20"]
    fig = new_figure(7.5, 5.5)
    ax = fig.add_subplot()
    for i, (n, s) in enumerate(pooled.items()):
        c = roc_curve(s, issame)
        style = {"color": "black", "lw": 2.0} if n == BASELINE else {"color": palette(i % 20), "lw": 1.0}
        if n in (NO_GATES, RUNNING_MEAN, STRICT):
            style["ls"] = "--"
        ax.plot(np.maximum(c.far, 1e-6), c.tar, label=n, **style)
    ax.set(xscale="log", xlim=(1e-5, 1), xlabel="FAR", ylabel="TAR", title="Progressive QWFA, reference × query ROC")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, NAME, model_help="final model (model.pt)")
    p.add_argument("--refs", type=int, default=10, help="reference images per enrolled identity")
    p.add_argument("--queries", type=int, default=10, help="query frames per identity")
    p.add_argument("--degrade-p", type=float, default=0.5, help="probability that a query frame is degraded")
    p.add_argument("--repeats", type=int, default=5, help="independent splits/draws, pooled")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and degradations")
    args = p.parse_args(argv)
    ref = load_model_ref(args.model, "final model.pt")
    held = held_out_source(ref, args.data_dir)
    note = (
        "The 40 CelebA identities held out by the model's own training config (`data.eval_identities`); never "
        "seen in training. Distractors are held-out identities too, so no query was seen in training."
    )
    figures = run_e4(
        ref,
        source_images(held),
        held.labels,
        args.out,
        refs=args.refs,
        queries=args.queries,
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
