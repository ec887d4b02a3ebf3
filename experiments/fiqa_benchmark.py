"""FIQA benchmark: does the EQFace quality predict recognition errors better than the signals a user gets for free?

The field's protocol (ISO/IEC 29794-1 practice): EDC with the comparison threshold fixed at start FMR 1e-3, pair
quality = min of the two images' qualities, FNMR of the kept genuine comparisons as the lowest-quality comparisons are
discarded, pAUC over discard [0, 0.2] and [0, 0.3]; 95 % confidence intervals by a bootstrap over identities. Real
faces only: Extended Yale B, ORL, the model's held-out CelebA identities, and those faces under degradation families
that no training code generates (``eqface.eval.conditions``). Every quality measure runs on the same network:
EQFace, random, embedding norm, Laplacian sharpness and SER-FIQ.

    .venv/bin/python -m experiments.fiqa_benchmark [--model runs/mfn-celeba/model.pt] [--replicates 1000]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from eqface.data.packs import load_pack
from eqface.data.sources import FaceSource
from eqface.eval import conditions
from eqface.eval.bootstrap import Interval, ThresholdSet, pauc_intervals
from eqface.eval.edc import SortedComparisons, pair_quality, random_quality
from eqface.eval.pairs import every_pair
from eqface.eval.serfiq import serfiq_quality
from eqface.eval.sharpness import sharpness_quality
from experiments.common import (
    DEFAULT_RUN,
    ModelRef,
    Report,
    command_line,
    experiment_parser,
    load_model_ref,
    new_figure,
    source_images,
)
from experiments.networks import MeasuredNetwork, as_network, fitted_batches

NAME = "fiqa_benchmark"
MEASURES = ("eqface", "random", "embedding_norm", "sharpness", "ser_fiq")
PEERS = ("embedding_norm", "ser_fiq")  # the free signals the EQFace quality must beat
ORACLE = "image_oracle"  # a reference, not a measure: it reads the labels (see ``image_oracle_quality``)
LIMITS = (0.2, 0.3)
START_FMR = 1e-3
MAX_IMPOSTORS = 400_000  # a seeded uniform sample of impostor comparisons above this; every genuine one is kept
SERFIQ_PASSES = 50
CLEAN = "clean"
DEGRADED_FRACTION = 0.5


@dataclass(frozen=True)
class FaceSet:
    """One benchmark dataset: images (uint8, any size), identity labels and a per-image condition tag."""

    name: str
    images: Sequence[np.ndarray]
    labels: np.ndarray
    condition: np.ndarray  # per image: "clean" or a held-out degradation family
    note: str
    threshold_from: str | None = None  # another set of the same images whose comparisons fix the threshold


@dataclass(frozen=True)
class Measured:
    """One forward pass per image: unit embeddings, and every quality measure (higher = better quality)."""

    emb: np.ndarray
    qualities: dict[str, np.ndarray]


def degraded_copy(faces: FaceSet, seed: int, fraction: float = DEGRADED_FRACTION) -> FaceSet:
    """Each image once: degraded with probability ``fraction`` by a family drawn uniformly (seeded), else clean.

    The score threshold is fixed on the clean set's comparisons (``threshold_from``), as a deployment fixes its
    operating threshold on ordinary images; degraded impostors would otherwise raise it until nearly every genuine
    comparison fails and no quality could be told from another.
    """
    rng = np.random.default_rng(seed)
    families = tuple(conditions.FAMILIES)
    images, tags = [], []
    for img in faces.images:
        if rng.random() < fraction:
            family = families[int(rng.integers(len(families)))]
            images.append(conditions.apply(img, family, rng))
        else:
            family = CLEAN
            images.append(img)
        tags.append(family)
    note = (
        f"{faces.note} Each image appears once, degraded with probability {fraction:g} by one of "
        f"{', '.join(families)} (uniform, seed {seed}), else clean; no training code generates these families "
        f"(eqface/eval/conditions.py). The threshold is fixed at the start FMR on `{faces.name}` (the same images, "
        "clean)."
    )
    return FaceSet(f"{faces.name}_degraded", images, faces.labels, np.array(tags), note, threshold_from=faces.name)


def measure(
    model: ModelRef | MeasuredNetwork, images: Sequence[np.ndarray], seed: int, passes: int, batch: int = 64
) -> Measured:
    """Embeddings and the five quality measures of ``images`` on one network (torch ``ModelRef`` or any
    ``MeasuredNetwork``, e.g. a grafted BYOR ONNX), deterministic for ``seed``."""
    network = as_network(model)
    stochastic = network.stochastic(seed)
    raws, eq, ser, sharp = [], [], [], []
    batches = fitted_batches(images, network.image_size, batch)
    total = -(-len(images) // batch)
    for fitted, x in tqdm(batches, total=total, desc="embedding", unit="batch", leave=False):
        raw, quality = network.embed(x)
        raws.append(raw.astype(np.float64))
        eq.append(quality)
        ser.append(serfiq_quality(stochastic(x, passes)))
        sharp.append(sharpness_quality(fitted))
    raw = np.concatenate(raws)
    norms = np.linalg.norm(raw, axis=1)
    qualities = {
        "eqface": np.concatenate(eq).astype(np.float64),
        "random": random_quality(len(images), seed),
        "embedding_norm": norms,
        "sharpness": np.concatenate(sharp),
        "ser_fiq": np.concatenate(ser),
    }
    return Measured(raw / np.maximum(norms, 1e-12)[:, None], qualities)


def image_oracle_quality(
    scores: np.ndarray, same: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float, n_images: int
) -> np.ndarray:
    """Per image: the fraction of its genuine comparisons that pass the threshold (1 for an image with none).

    It cheats — it reads the labels and the scores it is judged on — so it is not a quality measure but the
    reference for roughly what a per-image quality could reach here: discarding by it removes first the images whose
    comparisons fail. If even its pAUC interval overlaps a peer's, no per-image quality can beat that peer by the
    non-overlap criterion on this dataset.
    """
    genuine = np.zeros(n_images)
    failed = np.zeros(n_images)
    fails = same & (scores < threshold)
    for idx in (a, b):
        np.add.at(genuine, idx[same], 1.0)
        np.add.at(failed, idx[fails], 1.0)
    return np.where(genuine > 0, 1.0 - failed / np.maximum(genuine, 1.0), 1.0)


def comparisons(labels: np.ndarray, seed: int, max_impostors: int = MAX_IMPOSTORS):
    """Every genuine pair and (at most ``max_impostors``, a seeded uniform sample of) the impostor pairs."""
    a, b, same = every_pair(labels)
    impostors = np.flatnonzero(~same)
    if len(impostors) > max_impostors:
        keep = np.random.default_rng(seed).choice(impostors, max_impostors, replace=False)
        chosen = np.sort(np.concatenate([np.flatnonzero(same), keep]))
        a, b, same = a[chosen], b[chosen], same[chosen]
    return a, b, same, len(impostors)


def benchmark_set(
    ref: ModelRef | MeasuredNetwork,
    faces: FaceSet,
    *,
    seed: int,
    replicates: int,
    passes: int,
    start_fmr: float,
    reference: Measured | None = None,
) -> tuple[dict[str, Any], Measured]:
    """pAUC with bootstrap intervals of every measure on one dataset, plus the curves for the figure.

    ``reference``: the measured clean twin of ``faces`` (same images, same order) whose comparisons fix the threshold.
    """
    measured = measure(ref, faces.images, seed, passes)
    a, b, same, impostors_total = comparisons(faces.labels, seed)
    scores = np.einsum("nd,nd->n", measured.emb[a], measured.emb[b])
    pair_q = {m: pair_quality(measured.qualities[m], a, b) for m in MEASURES}
    threshold_set = None
    if reference is not None:
        clean_scores = np.einsum("nd,nd->n", reference.emb[a], reference.emb[b])
        threshold_set = ThresholdSet(clean_scores, same, faces.labels[a], faces.labels[b])
    threshold_source = threshold_set or ThresholdSet(scores, same, a, b)
    threshold = SortedComparisons(threshold_source.scores, same, scores).threshold(np.ones(len(scores)), start_fmr)
    oracle = image_oracle_quality(scores, same, a, b, threshold, len(faces.labels))
    pair_q[ORACLE] = pair_quality(oracle, a, b)
    intervals = pauc_intervals(
        scores,
        same,
        pair_q,
        faces.labels[a],
        faces.labels[b],
        limits=LIMITS,
        replicates=replicates,
        start_fmr=start_fmr,
        seed=seed,
        threshold_set=threshold_set,
        differences=[("eqface", peer) for peer in PEERS],
    )
    curves = {}
    for m in (*MEASURES, ORACLE):
        curve = SortedComparisons(scores, same, pair_q[m]).curve(np.ones(len(scores)), start_fmr, threshold)
        grid = np.linspace(0, min(0.5, float(curve.discard_fractions[-1])), 101)
        curves[m] = {"discard": grid.tolist(), "fnmr": np.interp(grid, curve.discard_fractions, curve.fnmr).tolist()}
    per_condition = {
        tag: {m: float(np.mean(measured.qualities[m][faces.condition == tag])) for m in MEASURES}
        for tag in np.unique(faces.condition)
    }
    return {
        "images": len(faces.labels),
        "identities": int(len(np.unique(faces.labels))),
        "genuine": int(same.sum()),
        "impostors": int((~same).sum()),
        "impostors_total": impostors_total,
        "fnmr_at_start": curves["random"]["fnmr"][0],
        "note": faces.note,
        "measures": {m: _interval_json(intervals[m]) for m in MEASURES},
        ORACLE: _interval_json(intervals[ORACLE]),
        "paired_differences": {f"eqface-{p}": _interval_json(intervals[f"eqface-{p}"]) for p in PEERS},
        "mean_quality_by_condition": per_condition,
        "threshold": threshold,
        "threshold_from": faces.threshold_from or faces.name,
        "curves": curves,
    }, measured


def _interval_json(by_limit: dict[float, Interval]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for limit, interval in by_limit.items():
        out[f"pauc_{limit:g}"] = interval.estimate
        out[f"ci_{limit:g}"] = [interval.low, interval.high]
    return out


def verdict(measures: dict[str, dict[str, Any]], limit: float = 0.2) -> dict[str, bool]:
    """EQFace beats a peer when its whole interval lies below the peer's (non-overlapping, lower pAUC)."""
    eq_high = measures["eqface"][f"ci_{limit:g}"][1]
    return {peer: eq_high < measures[peer][f"ci_{limit:g}"][0] for peer in PEERS}


def attainable(dataset: dict[str, Any], limit: float = 0.2) -> dict[str, bool]:
    """Whether the image oracle's interval lies wholly below each peer's: can the non-overlap criterion be met?"""
    high = dataset[ORACLE][f"ci_{limit:g}"][1]
    return {peer: high < dataset["measures"][peer][f"ci_{limit:g}"][0] for peer in PEERS}


def load_sets(
    ref: ModelRef | MeasuredNetwork,
    data_dir: Path,
    seed: int,
    limit: int | None = None,
    held_out: FaceSource | None = None,
) -> list[FaceSet]:
    """Yale (all normal illuminations), ORL, the model's held-out CelebA identities, and those degraded.

    ``held_out``: the CelebA faces to use instead of the model's own held-out set (e.g. the identities two compared
    networks both held out).
    """
    sets = []
    yale = load_pack(data_dir / "extended_yale_b_cropped.npz")
    sets.append(
        _face_set("yale", yale, "Extended Yale B, every normal image, aligned onto the ArcFace template.", limit)
    )
    orl = load_pack(data_dir / "orl_att_faces.npz")
    sets.append(_face_set("orl", orl, "ORL / AT&T, all 400 images (grey, 112×92, fitted to the input).", limit))
    held = held_out if held_out is not None else as_network(ref).held_out(data_dir)
    celeba = _face_set(
        "celeba_heldout", held, "CelebA identities the model's training run held out (data.eval_identities).", limit
    )
    sets += [celeba, degraded_copy(celeba, seed)]
    return sets


def _face_set(name: str, source, note: str, limit: int | None) -> FaceSet:
    images = source_images(source)
    labels = np.asarray(source.labels)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return FaceSet(name, images, labels, np.full(len(labels), CLEAN), note)


def run_benchmark(
    ref: ModelRef | MeasuredNetwork,
    sets: Sequence[FaceSet],
    out_dir: Path,
    *,
    seed: int = 0,
    replicates: int = 1000,
    passes: int = SERFIQ_PASSES,
    start_fmr: float = START_FMR,
    command: str | None = None,
    attempts: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``attempts``: earlier benchmark runs of other variants (``load_attempts``), tabled beside this one."""
    report = Report(out_dir, "FIQA benchmark — EDC pAUC with bootstrap confidence intervals over identities")
    report.add_models([ref])
    report.figures.update({"start_fmr": start_fmr, "replicates": replicates, "serfiq_passes": passes, "seed": seed})
    datasets, measured = {}, {}
    for faces in tqdm(sets, desc="datasets", unit="set"):
        reference = measured[faces.threshold_from] if faces.threshold_from else None
        datasets[faces.name], measured[faces.name] = benchmark_set(
            ref, faces, seed=seed, replicates=replicates, passes=passes, start_fmr=start_fmr, reference=reference
        )
    report.figures["datasets"] = datasets
    report.figures["eqface_beats"] = {name: verdict(d["measures"]) for name, d in datasets.items()}
    report.figures["attainable"] = {name: attainable(d) for name, d in datasets.items()}
    _write_report(report, ref, datasets, replicates, passes, start_fmr)
    if attempts:
        report.figures["attempts"] = {name: attempt_summary(a) for name, a in attempts.items()}
        _attempts_section(report, report.figures["attempts"])
    report.write(command)
    return report.figures


def _write_report(
    report: Report,
    ref: ModelRef | MeasuredNetwork,
    datasets: dict[str, Any],
    replicates: int,
    passes: int,
    start_fmr: float,
) -> None:
    report.section("Protocol")
    report.text(
        f"Network: {ref.describe()}. Every measure runs on its forward pass: `eqface` = the quality branch; "
        "`random` = uniform [0, 1) (seeded, the floor); `embedding_norm` = L2 norm of the embedding before "
        "normalisation (MagFace's observation); `sharpness` = variance of the Laplacian of the grey network input; "
        f"`ser_fiq` = SER-FIQ with {passes} stochastic passes, dropout 0.5 on the pre-pooling feature map and the "
        "embedding head run per pass (no training).",
        f"EDC: threshold fixed at start FMR {start_fmr:g} over the impostor comparisons (of the clean twin for the "
        "degraded set); pair quality = min; FNMR of "
        f"the kept genuine comparisons; pAUC = raw area over discard [0, 0.2] and [0, 0.3] (lower is better). All "
        f"genuine comparisons; impostor comparisons above {MAX_IMPOSTORS:,} are a seeded uniform sample. 95 % "
        f"intervals: {replicates} bootstrap replicates over identities (identities drawn with replacement, each "
        "comparison weighted by how often its identities were drawn, the threshold recomputed per replicate; the "
        "same replicates for every measure).",
        "A win: EQFace's pAUC[0, 0.2] interval lies wholly below the peer's (non-overlapping 95 % intervals).",
    )
    report.table(
        ["dataset", "images", "identities", "genuine", "impostors used / all", "threshold (set on)", "FNMR at start"],
        [
            [
                n,
                d["images"],
                d["identities"],
                d["genuine"],
                f"{d['impostors']} / {d['impostors_total']}",
                f"{d['threshold']:.4f} ({d['threshold_from']})",
                f"{d['fnmr_at_start']:.4f}",
            ]
            for n, d in datasets.items()
        ],
    )
    report.text(*(f"- `{n}`: {d['note']}" for n, d in datasets.items()))
    for limit in LIMITS:
        report.section(f"pAUC [0, {limit:g}] with 95 % intervals (lower is better)")
        rows = []
        for name, d in datasets.items():
            cells = []
            for v in (*(d["measures"][m] for m in MEASURES), d[ORACLE]):
                cells.append(f"{v[f'pauc_{limit:g}']:.4f} [{v[f'ci_{limit:g}'][0]:.4f}, {v[f'ci_{limit:g}'][1]:.4f}]")
            rows.append([name, *cells])
        report.table(["dataset", *MEASURES, f"{ORACLE} (reference, reads the labels)"], rows)
    report.section("Does EQFace win? (pAUC[0, 0.2], non-overlapping intervals)")
    report.text(
        f"`{ORACLE}` ranks each image by the fraction of its own genuine comparisons that pass the threshold — it "
        "reads the labels and scores it is judged on, so it is the reference for what any per-image quality could "
        "reach. 'attainable' asks whether even that reference's interval lies wholly below the peer's; where it "
        "does not, the non-overlap criterion cannot be met on that dataset by any quality, EQFace or other, and "
        "only the paired differences below can separate the measures."
    )
    report.table(
        ["dataset", *(f"beats {p}" for p in PEERS), *(f"attainable vs {p}" for p in PEERS)],
        [
            [
                n,
                *("yes" if verdict(d["measures"])[p] else "no" for p in PEERS),
                *("yes" if v else "no" for v in attainable(d).values()),
            ]
            for n, d in datasets.items()
        ],
    )
    for name, d in datasets.items():
        by_condition = d["mean_quality_by_condition"]
        if len(by_condition) > 1:
            report.section(f"Mean quality per condition — {name}")
            report.text("Each measure on its own scale; a useful quality ranks the clean images highest.")
            report.table(
                ["condition", *MEASURES],
                [[tag, *(f"{values[m]:.4g}" for m in MEASURES)] for tag, values in by_condition.items()],
            )
    report.section("Paired differences EQFace − peer (same bootstrap replicates)")
    report.text(
        "Comparing two marginal intervals is conservative: both move together with the identities drawn. The paired "
        "difference of pAUCs over the same replicates says whether EQFace is lower on the same people (below 0 = "
        "EQFace better); it is reported beside the stricter non-overlap criterion, not instead of it."
    )
    rows = []
    for name, d in datasets.items():
        for key, v in d["paired_differences"].items():
            rows.append(
                [name, key]
                + [
                    f"{v[f'pauc_{lim:g}']:+.4f} [{v[f'ci_{lim:g}'][0]:+.4f}, {v[f'ci_{lim:g}'][1]:+.4f}]"
                    for lim in LIMITS
                ]
            )
    report.table(["dataset", "difference", *(f"pAUC [0, {lim:g}]" for lim in LIMITS)], rows)
    report.section("The paper's claim beside ours")
    report.text(
        "The paper (Liu & Tan, CVPRW 2021) shows its quality by examples (Fig. 4) and by the recognition gains of "
        "quality-weighted aggregation (QWFA, Tables 2–3); it reports no EDC and no comparison with free quality "
        "signals. This benchmark asks the stricter question the FIQA literature asks, on data and degradations the "
        "training never produced."
    )
    _figure(report, datasets)


def load_attempts(folder: Path) -> dict[str, dict[str, Any]]:
    """Every ``<folder>/<name>/results.json`` with its ``note.md`` (what the attempt changed and why), by name."""
    attempts = {}
    for results in sorted(folder.glob("*/results.json")):
        note = results.parent / "note.md"
        if not note.is_file():
            raise ValueError(f"attempt {results.parent.name} has no note.md saying what it changed and why")
        attempts[results.parent.name] = {**json.loads(results.read_text()), "note": note.read_text().strip()}
    return attempts


def attempt_summary(attempt: dict[str, Any]) -> dict[str, Any]:
    """What one attempt scored: EQFace's pAUC[0, 0.2] per dataset, its paired differences and wins."""
    rows = {}
    for name, d in attempt["datasets"].items():
        rows[name] = {
            "eqface": d["measures"]["eqface"]["pauc_0.2"],
            "ci": d["measures"]["eqface"]["ci_0.2"],
            "paired": {peer: d["paired_differences"][f"eqface-{peer}"]["ci_0.2"] for peer in PEERS},
            "beats": verdict(d["measures"]),
        }
    return {"note": attempt["note"], "model_files": attempt.get("model_files", {}), "datasets": rows}


def _attempts_section(report: Report, attempts: dict[str, dict[str, Any]]) -> None:
    report.section("The search: every attempt, including the ones that failed")
    report.text(
        "Each attempt is one benchmark run of another Step-2 variant on the same data, seeds and replicates "
        "(`experiments/results/fiqa_benchmark/attempts/<name>/`, with its own report). Cells: EQFace's pAUC[0, 0.2]; "
        "then the paired 95 % interval of EQFace − embedding norm and EQFace − SER-FIQ (wholly below 0 = lower on "
        "the same identities); **win** = the strict criterion (non-overlapping marginal intervals).",
        *(f"- **{name}**: {a['note']}" for name, a in attempts.items()),
    )
    names = list(next(iter(attempts.values()))["datasets"])

    def cell(d: dict[str, Any]) -> str:
        paired = "; ".join(f"{p}: [{lo:+.4f}, {hi:+.4f}]" for p, (lo, hi) in d["paired"].items())
        wins = [p for p, won in d["beats"].items() if won]
        return f"{d['eqface']:.4f} ({paired}){' **win** over ' + ', '.join(wins) if wins else ''}"

    report.table(["attempt", *names], [[n, *(cell(a["datasets"][k]) for k in names)] for n, a in attempts.items()])


def _figure(report: Report, datasets: dict[str, Any]) -> None:
    fig = new_figure(5.0 * len(datasets), 4.0)
    for k, (name, d) in enumerate(datasets.items()):
        ax = fig.add_subplot(1, len(datasets), k + 1)
        for m in (*MEASURES, ORACLE):
            c = d["curves"][m]
            style = {"linewidth": 2} if m == "eqface" else {"linestyle": "--", "color": "k"} if m == ORACLE else {}
            ax.plot(c["discard"], c["fnmr"], label=m, **style)
        ax.set_xlim(0, 0.3)
        ax.set_title(name)
        ax.set_xlabel("fraction of comparisons discarded")
        if k == 0:
            ax.set_ylabel(f"FNMR at start FMR {report.figures['start_fmr']:g}")
            ax.legend(fontsize=8)
    report.image(fig, "edc.png", "EDC per dataset: FNMR as the lowest-quality comparisons are discarded")
    fig = new_figure(10, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(MEASURES)
    for j, m in enumerate(MEASURES):
        est = [d["measures"][m]["pauc_0.2"] for d in datasets.values()]
        low = [d["measures"][m]["ci_0.2"][0] for d in datasets.values()]
        high = [d["measures"][m]["ci_0.2"][1] for d in datasets.values()]
        x = np.arange(len(datasets)) + j * width
        ax.bar(x, est, width, label=m)
        ax.errorbar(x, est, yerr=[np.subtract(est, low), np.subtract(high, est)], fmt="none", ecolor="k", capsize=2)
    ax.set_xticks(np.arange(len(datasets)) + 0.4 - width / 2, list(datasets))
    ax.set_ylabel("pAUC [0, 0.2] (lower is better)")
    ax.legend(fontsize=8)
    report.image(fig, "pauc_ci.png", "pAUC[0, 0.2] per dataset and measure with 95 % bootstrap intervals")


def main(argv: Sequence[str] | None = None) -> int:
    p = experiment_parser(__doc__.splitlines()[0], NAME, "EQFace model.pt (its training config names the held-out set)")
    p.set_defaults(model=DEFAULT_RUN / "model.pt")
    p.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates over identities")
    p.add_argument("--serfiq-passes", type=int, default=SERFIQ_PASSES, help="SER-FIQ stochastic passes")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline, degradations and bootstrap")
    p.add_argument(
        "--attempts",
        type=Path,
        help="folder of earlier runs of this benchmark on other variants (<name>/results.json + note.md), "
        "tabled in this report as the search that led to the model",
    )
    args = p.parse_args(argv)
    attempts = load_attempts(args.attempts) if args.attempts else None
    ref = load_model_ref(args.model, args.model.parent.name)
    sets = load_sets(ref, args.data_dir, args.seed)
    run_benchmark(
        ref,
        sets,
        args.out,
        seed=args.seed,
        replicates=args.replicates,
        passes=args.serfiq_passes,
        command=command_line(f"experiments.{NAME}"),
        attempts=attempts,
    )
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
