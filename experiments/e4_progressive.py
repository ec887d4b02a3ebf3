"""E4: progressive QWFA (Eq. 8–9) for real-time video recognition, the paper's §5 protocol scaled down.

Reference set: single images of enrolled identities. Query set: other images of the same identities plus distractor
identities, each query identity's images forming a "video" (shuffled order, some frames degraded by the training
family or the held-out family, reported apart). Every reference image is compared with every query frame; a query
frame is represented by itself (baseline, no fusion) or by the progressive QWFA template of its video so far.

(f_th, s_th) is chosen on a validation split and reported on a disjoint test split: the held-out identities are
divided (seeded) into validation and test identities; the f_th × s_th sweep runs on validation only, and the test
split sees only the chosen pair, the paper's pair, no fusion, the references and an explicitly given pair.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from eqface.aggregation import PAPER_F_TH, PAPER_S_TH, ProgressiveQWFA
from eqface.eval.pairs import all_pairs
from eqface.eval.roc import auc, tar_at_far
from experiments.common import (
    BOOTSTRAP_REPS,
    Embeddings,
    ModelRef,
    Report,
    command_line,
    embed_images,
    experiment_parser,
    fmt_far,
    held_out_source,
    load_model_ref,
    paired_bootstrap_tar,
    source_images,
)
from experiments.degraded_frames import FAMILIES, draw_degradations, embed_frames, quality_by_condition
from experiments.e4_report import write_report
from experiments.e4_rows import (
    BASELINE,
    CHOSEN_PREFIX,
    F_THS,
    GIVEN_PREFIX,
    NO_GATES,
    RUNNING_MEAN,
    S_THS,
    STRICT,
    chosen_name,
    given_name,
    paper_name,
    sweep_name,
)

NAME = "e4_progressive"
FARS = (1e-4, 1e-3, 1e-2, 1e-1)
SELECT_FAR = 1e-3  # the pair is chosen by validation TAR at this FAR; ties: fewer fusions, then AUC
VALIDATION_FRACTION = 0.5
CHOICE_RULE = (
    "the swept pair with the highest validation TAR at FAR {far}; ties → the pair that merges fewer frames "
    "(lower merged fraction), then the higher validation AUC"
)

Variant = tuple[float, float, bool, bool]  # (f_th, s_th, use quality, strict seed)


def split_identities(
    labels: np.ndarray, validation_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled identities divided into (validation, test), disjoint; each side gets at least two identities."""
    ids = rng.permutation(np.unique(labels))
    if len(ids) < 4:
        raise ValueError(f"need at least 4 identities to split into validation and test, got {len(ids)}")
    n_val = min(max(2, round(validation_fraction * len(ids))), len(ids) - 2)
    return np.sort(ids[:n_val]), np.sort(ids[n_val:])


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


def sweep_variants() -> dict[str, Variant]:
    """The f_th × s_th grid, run on the validation split only."""
    return {sweep_name(f, s): (f, s, True, False) for f, s in itertools.product(F_THS, S_THS)}


def reported_variants(chosen: str, given: tuple[float, float] | None) -> dict[str, Variant]:
    """What the test split sees: the validation choice, the paper's pair, references, and a given pair.

    Gates at -2/-1 never fire (cosine ≥ -1, quality ≥ 0).
    """
    out = {chosen_name(chosen): sweep_variants()[chosen], paper_name(): (PAPER_F_TH, PAPER_S_TH, True, False)}
    if given is not None:
        out[given_name(*given)] = (given[0], given[1], True, False)
    out[NO_GATES] = (-2.0, -1.0, True, False)
    out[RUNNING_MEAN] = (-2.0, -1.0, False, False)
    out[STRICT] = (PAPER_F_TH, PAPER_S_TH, True, True)
    return out


def choose_pair(results: dict[str, Any], merged: dict[str, float], far: float) -> str:
    """The swept pair by CHOICE_RULE: validation TAR at ``far`` (unreachable counts as −1), fewer merges, AUC."""
    swept = [n for n in sweep_variants() if n in results]
    if not swept:
        raise ValueError("no swept (f_th, s_th) pair among the validation results")

    def key(n: str) -> tuple[float, float, float]:
        tar = results[n]["tar_at_far"][far]
        return (-1.0 if tar is None else tar, -merged[n], results[n]["auc"])

    return max(swept, key=key)


@dataclass(frozen=True)
class QueryDraw:
    """One repeat: reference images, query frames in video order (with their embeddings) and the conditions."""

    ref_idx: np.ndarray  # [R] image indices
    query_idx: np.ndarray  # [Q] image indices, grouped by identity
    enrolled: np.ndarray  # identities with references
    kind: np.ndarray  # [Q] CLEAN or an index into the family's kinds
    query: Embeddings  # [Q] frames as the camera gave them (degraded or not)


@dataclass(frozen=True)
class DrawSettings:
    """How one split's repeats are drawn; ``split`` (0 validation, 1 test) keeps the two splits' streams apart."""

    family: str
    split: int
    refs: int
    queries: int
    degrade_p: float
    strength: tuple[float, float]
    seed: int


def draw_repeat(
    ref: ModelRef, images: Sequence[np.ndarray], labels: np.ndarray, clean: Embeddings, repeat: int, cfg: DrawSettings
) -> QueryDraw:
    """Both families draw from the same generator: same split, same degraded frames, different degradations."""
    rng = np.random.default_rng([cfg.seed, cfg.split, repeat])
    ref_idx, query_idx, enrolled = split_reference_query(labels, cfg.refs, cfg.queries, rng)
    spec = draw_degradations(query_idx, cfg.degrade_p, cfg.strength, rng, cfg.family)
    query = embed_frames(ref, images, clean, spec, (cfg.seed, cfg.split, repeat))
    return QueryDraw(ref_idx, query_idx, enrolled, spec.kind, query)


def query_representations(
    draw: QueryDraw, video: np.ndarray, variants: dict[str, Variant]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Each row's query features [Q, D] and, for the progressive ones, the fraction of later frames merged."""
    emb = draw.query.emb.astype(np.float64)
    feats, merged = {BASELINE: emb}, {}
    for n, (f_th, s_th, use_q, strict) in variants.items():
        s = draw.query.quality if use_q else np.ones_like(draw.query.quality)
        feats[n], merged[n] = query_templates(emb, s, video, f_th, s_th, strict)
    return feats, merged


@dataclass(frozen=True)
class SplitResult:
    """One family on one split: figures for results.json, plus the pooled scores and truth for the ROC."""

    figures: dict[str, Any]
    pooled: dict[str, np.ndarray]
    issame: np.ndarray


def evaluate_split(
    ref: ModelRef,
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    clean: Embeddings,
    cfg: DrawSettings,
    variants: dict[str, Variant],
    repeats: int,
    fars: Sequence[float],
    select_far: float,
) -> SplitResult:
    """Every row of ``variants`` (and the baseline) on the images of one split, pooled over repeats."""
    draws = [draw_repeat(ref, images, labels, clean, r, cfg) for r in range(repeats)]
    scores: dict[str, list[np.ndarray]] = {}
    merged: dict[str, list[float]] = {}
    issame_all, per_repeat = [], []
    for draw in draws:
        video = labels[draw.query_idx]
        _, _, same = all_pairs(labels[draw.ref_idx], video)
        issame_all.append(same)
        feats, fractions = query_representations(draw, video, variants)
        for n, fraction in fractions.items():
            merged.setdefault(n, []).append(fraction)
        ref_emb = clean.emb[draw.ref_idx].astype(np.float64)
        for n, t in feats.items():
            scores.setdefault(n, []).append((ref_emb @ t.T).ravel())
        per_repeat.append({n: tar_at_far(v[-1], same, [select_far])[select_far] for n, v in scores.items()})
    issame = np.concatenate(issame_all)
    pooled = {n: np.concatenate(v) for n, v in scores.items()}
    figures = {
        "identities": np.unique(labels).tolist(),
        "counts": _counts(draws, labels),
        "genuine_pairs": int(issame.sum()),
        "impostor_pairs": int((~issame).sum()),
        "results": {n: {"tar_at_far": tar_at_far(s, issame, fars), "auc": auc(s, issame)} for n, s in pooled.items()},
        "per_repeat_tar_at_select_far": per_repeat,
        "merged_fraction": {n: float(np.mean(v)) for n, v in merged.items()},
        "quality_by_condition": quality_by_condition(
            np.concatenate([d.query.quality for d in draws]), np.concatenate([d.kind for d in draws]), cfg.family
        ),
    }
    return SplitResult(figures, pooled, issame)


def comparison_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """(a, b) test rows reported as b − a: chosen, paper and given pairs against no fusion, the chosen pair against
    the paper's and against fusion without quality (what quality adds), quality weighting within ungated fusion, and
    the strict seed against the re-seeding one."""
    chosen = next(n for n in names if n.startswith(CHOSEN_PREFIX))
    given = [n for n in names if n.startswith(GIVEN_PREFIX)]
    pairs = [(BASELINE, chosen), (BASELINE, paper_name()), (paper_name(), chosen)]
    pairs += [(BASELINE, g) for g in given] + [(RUNNING_MEAN, chosen), (RUNNING_MEAN, NO_GATES), (paper_name(), STRICT)]
    return pairs


def _compare(split: SplitResult, fars: Sequence[float], seed: int) -> dict[str, Any]:
    res, out = split.figures["results"], {}
    for a, b in comparison_pairs(list(res)):
        out[f"{b} vs {a}"] = {
            "tar_diff": {far: _diff(res[b]["tar_at_far"][far], res[a]["tar_at_far"][far]) for far in fars},
            "interval": paired_bootstrap_tar(split.pooled[a], split.pooled[b], split.issame, fars, seed=seed),
            "auc_diff": res[b]["auc"] - res[a]["auc"],
        }
    return out


def evaluate_family(
    ref: ModelRef,
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    clean: Embeddings,
    subsets: Sequence[np.ndarray],
    cfg: DrawSettings,
    repeats: int,
    fars: Sequence[float],
    select_far: float,
    given: tuple[float, float] | None,
) -> tuple[dict[str, Any], SplitResult]:
    """The sweep on the validation images (``subsets[0]``), then the chosen pair on the test images only."""

    def run(split: int, variants: dict[str, Variant]) -> SplitResult:
        idx = subsets[split]
        return evaluate_split(
            ref,
            [images[i] for i in idx],
            labels[idx],
            clean.take(idx),
            replace(cfg, split=split),
            variants,
            repeats,
            fars,
            select_far,
        )

    validation = run(0, sweep_variants())
    chosen = choose_pair(validation.figures["results"], validation.figures["merged_fraction"], select_far)
    test = run(1, reported_variants(chosen, given))  # the test split is evaluated after the choice, never before
    test.figures["comparisons"] = _compare(test, fars, cfg.seed)
    return {"chosen": chosen, "validation": validation.figures, "test": test.figures}, test


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
    split_seed: int = 0,
    validation_fraction: float = VALIDATION_FRACTION,
    fars: Sequence[float] = FARS,
    select_far: float = SELECT_FAR,
    families: Sequence[str] = tuple(FAMILIES),
    given: tuple[float, float] | None = None,
    data_note: str = "",
    command: str | None = None,
) -> dict[str, Any]:
    """E4 per family: sweep on the validation identities, the chosen pair (and ``given``) on the test identities."""
    report = Report(out_dir, "E4 — progressive QWFA (Eq. 8–9): f_th × s_th chosen on validation, reported on test")
    labels = np.asarray(labels)
    val_ids, test_ids = split_identities(labels, validation_fraction, np.random.default_rng(split_seed))
    clean = embed_images(ref.net, images, ref.image_size)
    subsets = [np.flatnonzero(np.isin(labels, ids)) for ids in (val_ids, test_ids)]
    by_family, curves = {}, {}
    for family in families:
        cfg = DrawSettings(family, 0, refs, queries, degrade_p, strength, seed)
        by_family[family], test = evaluate_family(
            ref, images, labels, clean, subsets, cfg, repeats, fars, select_far, given
        )
        curves[family] = (test.pooled, test.issame)
    report.figures.update(
        {
            "model": ref.describe(),
            "refs_per_id": refs,
            "queries_per_id": queries,
            "degrade_p": degrade_p,
            "strength": strength,
            "repeats": repeats,
            "seed": seed,
            "split": {
                "seed": split_seed,
                "validation_fraction": validation_fraction,
                "validation_ids": val_ids.tolist(),
                "test_ids": test_ids.tolist(),
            },
            "select_far": select_far,
            "choice_rule": CHOICE_RULE.format(far=fmt_far(select_far)),
            "given": None if given is None else {"f_th": given[0], "s_th": given[1]},
            "bootstrap_reps": BOOTSTRAP_REPS,
            "families": by_family,
        }
    )
    report.add_models([ref])
    write_report(report, ref, labels, curves, fars, data_note)
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


def _diff(b: float | None, a: float | None) -> float | None:
    return None if a is None or b is None else b - a


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, NAME, model_help="final model (model.pt)")
    p.add_argument("--refs", type=int, default=10, help="reference images per enrolled identity")
    p.add_argument("--queries", type=int, default=10, help="query frames per identity")
    p.add_argument("--degrade-p", type=float, default=0.5, help="probability that a query frame is degraded")
    p.add_argument("--repeats", type=int, default=5, help="independent splits/draws per split, pooled")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference/query draws and degradations")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation/test identity split")
    p.add_argument(
        "--families", nargs="+", choices=tuple(FAMILIES), default=list(FAMILIES), help="degradation families to run"
    )
    p.add_argument(
        "--f-th", type=float, default=None, help=f"given f_th (calibrated); default {PAPER_F_TH} with --s-th"
    )
    p.add_argument(
        "--s-th", type=float, default=None, help=f"given s_th (calibrated); default {PAPER_S_TH} with --f-th"
    )
    args = p.parse_args(argv)
    given = None
    if args.f_th is not None or args.s_th is not None:
        given = (PAPER_F_TH if args.f_th is None else args.f_th, PAPER_S_TH if args.s_th is None else args.s_th)
        if not (-1.0 <= given[0] <= 1.0 and 0.0 <= given[1] <= 1.0):
            p.error(f"--f-th must lie in [-1, 1] (a cosine) and --s-th in [0, 1] (a quality), got {given}")
    ref = load_model_ref(args.model, "final model.pt")
    held = held_out_source(ref, args.data_dir)
    note = (
        f"The {len(np.unique(held.labels))} CelebA identities held out by the model's own training config "
        "(`data.eval_identities`); never seen in training. Distractors are held-out identities too, so no query "
        "was seen in training."
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
        split_seed=args.split_seed,
        families=args.families,
        given=given,
        data_note=note,
        command=command_line(f"experiments.{NAME}"),
    )
    print((args.out / "report.md").read_text())
    print(f"wrote {args.out} in {figures['runtime_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
