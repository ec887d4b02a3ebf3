"""E2: does training with quality weights (Step 3, QW) help, and is it the weights' *information* that helps?

One Step-2 checkpoint, five Step-3 arms that differ only in how the samples are weighed (trained by
`experiments/train_e2_arms.sh`): QW (the paper: s_i from the Step-2 network), none (s_i = 1), mean (every s_i = the
mean s: the same average logit scale s·S and gradient size as QW, no per-sample information), shuffled (QW's s_i
permuted across samples: the same weights on the wrong faces) and QWDF (QW, samples with s_i < 0.1 left out). "none"
alone cannot separate QW's information from its smaller logit scale (s ≈ 0.45 turns S = 64 into ≈ 29, halving the
gradients); "mean" and "shuffled" can. The Step-2 network itself (before Step 3) is the sixth row: the recognition
that Step 3 must not lose.

Every network is evaluated on identities never seen in training: the 40 CelebA identities the training run held out,
Extended Yale B (38 subjects, every illumination) and ORL (40 subjects). 10-fold verification accuracy on balanced
sampled pairs; TAR at FAR and AUC on every within-set pair.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eqface.eval.pairs import every_pair, make_pairs
from eqface.eval.roc import auc, max_false_accepts, roc_curve, tar_at_far
from eqface.eval.verification import kfold_accuracy
from experiments.common import (
    BOOTSTRAP_REPS,
    DEFAULT_RUN,
    ModelRef,
    Report,
    command_line,
    diff_verdict,
    embed_images,
    experiment_parser,
    flat_config_diff,
    fmt_far,
    fmt_pct,
    held_out_source,
    load_model_ref,
    new_figure,
    paired_bootstrap_tar,
    source_images,
)

NAME = "e2_qw_training"
FARS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
MAX_BALANCED_PAIRS = 3000  # per kind, for the 10-fold accuracy (LFW uses 3000 + 3000)


@dataclass(frozen=True)
class EvalSet:
    name: str
    images: Sequence[np.ndarray]
    labels: np.ndarray
    note: str


def balanced_pairs(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LFW-style: as many genuine as impostor pairs (up to MAX_BALANCED_PAIRS each), drawn by ``make_pairs``."""
    counts = np.bincount(labels)
    n = int(min(MAX_BALANCED_PAIRS, (counts * (counts - 1) // 2).sum()))
    return make_pairs(labels, n, n, np.random.default_rng(seed))


def evaluate_set(
    emb: np.ndarray, labels: np.ndarray, seed: int, fars: Sequence[float] = FARS
) -> tuple[dict[str, Any], np.ndarray]:
    """One arm on one set: its figures, and its scores on every within-set pair (for paired comparisons)."""
    a, b, same = balanced_pairs(labels, seed)
    acc = kfold_accuracy(np.einsum("nd,nd->n", emb[a], emb[b]).astype(np.float64), same, 10)
    ia, ib, isame = every_pair(labels)
    scores = np.einsum("nd,nd->n", emb[ia].astype(np.float64), emb[ib].astype(np.float64))
    curve = roc_curve(scores, isame)
    keep = np.unique(np.concatenate([np.searchsorted(curve.far, np.logspace(-6, 0, 300)), [len(curve.far) - 1]]))
    keep = keep[keep < len(curve.far)]
    n_imp = int((~isame).sum())
    return {
        "accuracy": acc.mean,
        "accuracy_std": acc.std,
        "fold_accuracies": acc.fold_accuracies,
        "balanced_pairs_per_kind": int(same.sum()),
        "auc": auc(scores, isame),
        "tar_at_far": tar_at_far(scores, isame, fars),
        "genuine_pairs": int(isame.sum()),
        "impostor_pairs": n_imp,
        "false_accepts_allowed": {far: max_false_accepts(far, n_imp) for far in fars},
        "roc": {"far": curve.far[keep].round(8).tolist(), "tar": curve.tar[keep].round(6).tolist()},
    }, scores


def compare_arms(
    ra: dict[str, Any],
    rb: dict[str, Any],
    score_a: np.ndarray,
    score_b: np.ndarray,
    issame: np.ndarray,
    fars: Sequence[float],
    seed: int,
) -> dict[str, Any]:
    """Arm b minus arm a: accuracy (paired over the same folds) and TAR (paired bootstrap over the same pairs)."""
    d_folds = np.subtract(rb["fold_accuracies"], ra["fold_accuracies"])
    se = float(d_folds.std(ddof=1) / np.sqrt(len(d_folds)))
    intervals = paired_bootstrap_tar(score_a, score_b, issame, fars, seed=seed)
    return {
        "accuracy_diff": float(d_folds.mean()),
        "accuracy_interval": (float(d_folds.mean() - 2 * se), float(d_folds.mean() + 2 * se)),
        "tar_diff": {
            far: (None if ra["tar_at_far"][far] is None else rb["tar_at_far"][far] - ra["tar_at_far"][far])
            for far in fars
        },
        "tar_interval": intervals,
        "auc_diff": rb["auc"] - ra["auc"],
    }


def run_e2(
    models: Sequence[ModelRef],
    sets: Sequence[EvalSet],
    out_dir: Path,
    *,
    seed: int = 0,
    fars: Sequence[float] = FARS,
    command: str | None = None,
    run_logs: dict[str, Any] | None = None,
    checks: Sequence[str] = (),
    pairs: Sequence[tuple[str, str]] | None = None,
    paper_claim: str | None = None,
) -> dict[str, Any]:
    """Embeds every set once per model; ``checks`` are protocol facts verified by the caller (printed as is);
    ``pairs`` (a, b) are the comparisons reported as b − a (default: every pair in order)."""
    if pairs is None:
        pairs = [(a.name, b.name) for i, a in enumerate(models) for b in models[i + 1 :]]
    report = Report(out_dir, "E2 — quality-weighted training (Step 3 QW) against its controls")
    report.figures.update({"seed": seed, "fars": list(fars), "bootstrap_reps": BOOTSTRAP_REPS})
    report.add_models(models)
    _protocol(report, models, sets, seed, run_logs or {}, checks)
    results: dict[str, dict[str, Any]] = {}
    comparisons: dict[str, dict[str, Any]] = {}
    for s in sets:
        scores = {}
        results[s.name] = {}
        for ref in models:
            emb = embed_images(ref.net, s.images, ref.image_size).emb
            results[s.name][ref.name], scores[ref.name] = evaluate_set(emb, s.labels, seed, fars)
        issame = every_pair(s.labels)[2]
        comparisons[s.name] = {
            f"{b} vs {a}": compare_arms(
                results[s.name][a], results[s.name][b], scores[a], scores[b], issame, fars, seed
            )
            for a, b in pairs
        }
    report.figures["results"], report.figures["comparisons"] = results, comparisons
    for s in sets:
        _set_section(report, s, models, results[s.name], comparisons[s.name], fars)
    if paper_claim:
        report.section("The paper's claim beside ours")
        report.text(paper_claim)
    report.write(command)
    return report.figures


def _protocol(
    report: Report,
    models: Sequence[ModelRef],
    sets: Sequence[EvalSet],
    seed: int,
    run_logs: dict[str, Any],
    checks: Sequence[str],
) -> None:
    report.section("Protocol")
    report.text(
        "Compared networks (embeddings only; the quality branch plays no part in verification):",
    )
    report.table(
        ["arm", "file", "training config", "step training time (s, log.jsonl)"],
        [[m.name, m.describe(), m.config_note(), run_logs.get(m.name, {}).get("seconds") or "–"] for m in models],
    )
    rows = []
    for i, first in enumerate(models):
        for other in models[i + 1 :]:
            diff = flat_config_diff(first.config, other.config)
            rows.append(
                [
                    f"{first.name} → {other.name}",
                    "; ".join(f"`{k}`: {a} → {b}" for k, (a, b) in diff.items()) or "(none)",
                ]
            )
    if rows:
        report.text(
            "Stored training configs, what differs (arms of one run share its config; the Step-3 arms must "
            "differ only in `train.step3_quality` / `train.qwdf_threshold` and start from the same Step-2 "
            "`final.pt`):"
        )
        report.table(["configs", "differences"], rows)
    for line in checks:
        report.text(line)
    report.text(
        "Evaluation sets (identities never seen in training):",
        *(f"- **{s.name}**: {len(s.labels)} images, {len(np.unique(s.labels))} identities. {s.note}" for s in sets),
        f"Accuracy: 10-fold LFW protocol (threshold fitted on 9 folds, scored on the 10th) on balanced pairs "
        f"(min(genuine available, {MAX_BALANCED_PAIRS}) genuine + as many impostor pairs, `make_pairs`, seed {seed}; "
        "the same pairs for every arm). TAR@FAR and AUC: every unordered within-set pair. 'n/r' = FAR not "
        "reachable (fewer than 1/FAR impostor pairs). At a low FAR the threshold rests on the few highest impostor "
        "scores (the number allowed is printed under each table), so TAR there is noisy.",
        "Differences between arms: accuracy — mean over the same 10 folds with ± 2 standard errors of the paired "
        f"fold differences; TAR — a paired bootstrap ({BOOTSTRAP_REPS} replicates, genuine and impostor pairs "
        "resampled separately, both arms scored on the same draws), 95% percentile interval. Pairs sharing images "
        "are not independent, so the intervals are if anything too narrow: an interval holding 0 is 'within noise'.",
    )


def _set_section(
    report: Report,
    s: EvalSet,
    models: Sequence[ModelRef],
    res: dict[str, Any],
    comparisons: dict[str, Any],
    fars: Sequence[float],
) -> None:
    report.section(f"Results — {s.name}")
    first = next(iter(res.values()))
    report.text(
        f"{first['genuine_pairs']} genuine / {first['impostor_pairs']} impostor pairs for TAR@FAR; "
        f"{first['balanced_pairs_per_kind']} + {first['balanced_pairs_per_kind']} pairs for accuracy."
    )
    rows = [
        [
            m.name,
            f"{100 * res[m.name]['accuracy']:.2f} ± {100 * res[m.name]['accuracy_std']:.2f}",
            f"{res[m.name]['auc']:.4f}",
            *(fmt_pct(res[m.name]["tar_at_far"][far]) for far in fars),
        ]
        for m in models
    ]
    report.table(["arm", "accuracy % (10-fold, ± fold std)", "AUC", *(f"TAR@{fmt_far(f)} %" for f in fars)], rows)
    report.text(
        "False accepts the threshold allows at each FAR: "
        + ", ".join(f"{fmt_far(far)}: {first['false_accepts_allowed'][far] or 'n/r'}" for far in fars)
        + "."
    )
    thin = [fmt_far(far) for far in fars if (first["false_accepts_allowed"][far] or 0) in range(1, 10)]
    report.text(*(_verdict(name, c, fars) for name, c in comparisons.items()))
    if thin:
        report.text(
            f"Caution: at FAR {', '.join(thin)} the threshold rests on fewer than 10 impostor pairs; a jump "
            "there can come from one or two look-alike pairs, so read those columns as anecdotes."
        )
    report.image(
        _roc_figure(s.name, models, res),
        f"roc_{s.name.split()[0].lower()}.png",
        f"ROC on every within-set pair, {s.name}",
    )


def _verdict(name: str, c: dict[str, Any], fars: Sequence[float]) -> str:
    lo, hi = c["accuracy_interval"]
    acc_tag = "within noise" if lo <= 0 <= hi else "better" if lo > 0 else "worse"
    parts = [f"accuracy {100 * c['accuracy_diff']:+.2f} pts [{100 * lo:+.2f}, {100 * hi:+.2f}]: {acc_tag}"]
    parts += [
        f"TAR@{fmt_far(far)} {diff_verdict(c['tar_diff'][far], c['tar_interval'][far])}"
        for far in fars
        if c["tar_diff"][far] is not None
    ]
    return f"- **{name}**: " + "; ".join(parts) + f"; AUC {c['auc_diff']:+.4f}."


def _roc_figure(title: str, models: Sequence[ModelRef], res: dict[str, Any]):
    fig = new_figure(6.5, 4.5)
    ax = fig.add_subplot()
    for i, m in enumerate(models):
        roc = res[m.name]["roc"]
        far = np.maximum(np.asarray(roc["far"]), 1e-7)
        ax.plot(far, roc["tar"], label=f"{m.name} (AUC {res[m.name]['auc']:.4f})", color=f"C{i}")
    ax.set(xscale="log", xlim=(1e-5, 1), xlabel="FAR", ylabel="TAR", title=f"ROC — {title}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def step_seconds(folder: Path) -> float | None:
    """Total training seconds recorded in a step folder's log.jsonl (None when absent)."""
    log = folder / "log.jsonl"
    if not log.is_file():
        return None
    return round(sum(json.loads(line).get("seconds", 0.0) for line in log.read_text().splitlines() if line), 1)


def same_start_checks(step2: Path, arms: dict[str, Path]) -> list[str]:
    """Step 3 freezes the quality branch, so an arm whose branch equals step2's bit for bit started from it."""
    import torch

    from eqface.train import checkpoint

    start = {k: v for k, v in checkpoint.load(step2)["net"].items() if k.startswith("quality.")}
    lines = []
    for name, path in arms.items():
        net = checkpoint.load(path)["net"]
        same = all(torch.equal(v, net[k]) for k, v in start.items())
        lines.append(
            f"- {name}: quality branch {'bit-identical to' if same else 'DIFFERS from'} "
            f"`{_rel(step2)}` (frozen in Step 3, so {'it did' if same else 'it did NOT'} start from that "
            "Step-2 checkpoint)."
        )
    return lines


def _rel(path: Path) -> str:
    from experiments.common import REPO_ROOT

    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


ARMS = {  # folder under --arms → row label; the training command of each is in experiments/train_e2_arms.sh
    "qw": "step3 QW",
    "none": "step3 s=1 (control)",
    "mean": "step3 s=mean (control)",
    "shuffled": "step3 s shuffled (control)",
    "qwdf": "step3 QW + QWDF 0.1",
}
START = "before Step 3 (Step 1 → 2)"
PAPER_CLAIM = (
    "The paper's claim (Liu & Tan 2021, Tables 1–2, R100 on MS1MV2): retraining with QW lifts IJB-B TAR@FAR 1e-4 "
    "from 94.27 to 94.51 % and IJB-C from 95.62 to 95.84 %, LFW 99.80 → 99.82 %; QWDF (s_th 0.2) gives IJB-B "
    "94.68 %. Its baseline is Step 1 alone: it has no control arm with s_i = 1, constant or shuffled weights, so "
    "its gain may come from the extra training or the smaller logit scale as much as from the quality information."
)


def comparison_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """(a, b) pairs reported as b − a: every arm against the start, and QW against each control and QWDF."""
    arms = [n for n in names if n != START]
    pairs = [(START, arm) for arm in arms]
    qw = ARMS["qw"]
    return (
        pairs
        + [(other, qw) for other in arms if other != qw and "control" in other]
        + [(qw, other) for other in arms if "QWDF" in other]
    )


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, NAME)
    p.add_argument(
        "--start",
        type=Path,
        default=DEFAULT_RUN / "step2-1" / "final.pt",
        help="the Step-2 checkpoint every arm started from",
    )
    p.add_argument(
        "--arms",
        type=Path,
        default=DEFAULT_RUN.parent / "e2",
        help=f"folder holding one sub-folder per Step-3 arm ({', '.join(ARMS)}), each with final.pt",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the balanced pair sampling")
    args = p.parse_args(argv)
    from eqface.data.packs import load_pack

    missing = [name for name in ARMS if not (args.arms / name / "final.pt").is_file()]
    if missing:
        raise SystemExit(
            f"E2 arms not trained: {', '.join(missing)} (under {args.arms}); run "
            f"`experiments/train_e2_arms.sh {_rel(args.start)} {_rel(args.arms)}` first"
        )
    folders = {START: args.start.parent, **{label: args.arms / name for name, label in ARMS.items()}}
    models = [load_model_ref(folder / "final.pt", name) for name, folder in folders.items()]
    logs = {name: {"seconds": step_seconds(folder)} for name, folder in folders.items()}
    celeba = held_out_source(models[0], args.data_dir)
    yale = load_pack(args.data_dir / "extended_yale_b_cropped.npz")
    orl = load_pack(args.data_dir / "orl_att_faces.npz")
    sets = [
        EvalSet(
            "CelebA held-out",
            source_images(celeba),
            celeba.labels,
            "The last 40 identities (by label) of `celeba_wild_subset_rgb112.npz`, held out by the training run's "
            "own config (`data.eval_identities`), ArcFace-aligned RGB.",
        ),
        EvalSet(
            "Extended Yale B",
            source_images(yale),
            yale.labels,
            "`extended_yale_b_cropped.npz`: 38 subjects under every light angle, aligned onto the ArcFace template.",
        ),
        EvalSet(
            "ORL",
            source_images(orl),
            orl.labels,
            "`orl_att_faces.npz`, grey 112×92, not aligned to the ArcFace template (centre-cropped to the "
            "112×96 input), so absolute numbers are lower than on aligned faces.",
        ),
    ]
    checks = [
        f"The arms were trained with `experiments/train_e2_arms.sh {_rel(args.start)} {_rel(args.arms)}`: the same "
        "data, schedule, seed and starting point, differing only in `train.step3_quality` / `train.qwdf_threshold`.",
        *same_start_checks(args.start, {label: args.arms / name / "final.pt" for name, label in ARMS.items()}),
    ]
    figures = run_e2(
        models,
        sets,
        args.out,
        seed=args.seed,
        command=command_line(f"experiments.{NAME}"),
        run_logs=logs,
        checks=checks,
        pairs=comparison_pairs([m.name for m in models]),
        paper_claim=PAPER_CLAIM,
    )
    print((args.out / "report.md").read_text())
    print(f"wrote {args.out} in {figures['runtime_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
