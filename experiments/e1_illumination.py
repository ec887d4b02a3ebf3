"""E1: does the predicted quality track illumination? Extended Yale B, light angle as the objective quality label.

For each model: Spearman(quality, light angle), quality spread, quality per light-angle band, and the FNMR
error-versus-discard curve (EDC) of the EQFace quality against random, embedding-norm (MagFace-style) and sharpness
(Laplacian variance) baselines on all within-Yale comparisons.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from eqface import contract
from eqface.eval.edc import edc_curve, edc_pauc, embedding_norm_quality, pair_quality, random_quality
from eqface.eval.pairs import every_pair
from eqface.eval.roc import auc, tar_at_far
from eqface.eval.sharpness import sharpness_quality
from experiments.common import (
    DEFAULT_RUN,
    Embeddings,
    ModelRef,
    Report,
    command_line,
    embed_images,
    experiment_parser,
    fmt_far,
    fmt_pct,
    load_model_ref,
    new_figure,
)

NAME = "e1_illumination"
BAND_EDGES = (25.0, 50.0, 80.0)  # degrees; a band is (lo, hi], the first includes 0
BAND_LABELS = ("0–25°", "25–50°", "50–80°", ">80°")
ACCEPT_SPEARMAN = -0.5  # issue 2: Spearman(quality, light angle) <= -0.5
ACCEPT_STD = 0.1  # issue 2: quality std >= 0.1
PAUC_LIMITS = (0.2, 0.3)
DISCARD_POINTS = (0.0, 0.1, 0.2, 0.3)
VERIFY_FARS = (1e-4, 1e-3, 1e-2)
MEASURES = ("EQFace quality", "random", "embedding norm (MagFace-style)", "sharpness (Laplacian var.)")


def band_index(angles: np.ndarray) -> np.ndarray:
    """0..3 for the bands 0–25°, 25–50°, 50–80°, >80° (upper edges inclusive)."""
    return np.digitize(np.asarray(angles, dtype=np.float64), BAND_EDGES, right=True)


def quality_vs_angle(quality: np.ndarray, angles: np.ndarray) -> dict[str, Any]:
    bands = band_index(angles)
    per_band = []
    for b, label in enumerate(BAND_LABELS):
        q = quality[bands == b]
        per_band.append(
            {
                "band": label,
                "n": int(q.size),
                "mean": float(q.mean()) if q.size else None,
                "std": float(q.std()) if q.size else None,
            }
        )
    rho = float(spearmanr(quality, angles).statistic)
    std = float(np.std(quality))
    return {
        "spearman": rho,
        "std": std,
        "mean": float(np.mean(quality)),
        "bands": per_band,
        "accept_spearman": rho <= ACCEPT_SPEARMAN,
        "accept_std": std >= ACCEPT_STD,
    }


def edc_summary(
    scores: np.ndarray,
    issame: np.ndarray,
    idx_a: np.ndarray,
    idx_b: np.ndarray,
    measures: dict[str, np.ndarray],
    start_fmr: float,
) -> dict[str, dict[str, Any]]:
    """EDC, FNMR at a few discard fractions and normalised pAUC (mean FNMR over [0, limit]) for each quality measure."""
    out = {}
    for name, per_image in measures.items():
        curve = edc_curve(scores, issame, pair_quality(per_image, idx_a, idx_b), start_fmr)
        out[name] = {
            "threshold": curve.threshold,
            "fnmr_at_discard": {
                f"{d:g}": float(np.interp(d, curve.discard_fractions, curve.fnmr)) for d in DISCARD_POINTS
            },
            "pauc_normalised": {f"{lim:g}": edc_pauc(curve, lim, normalise=True) for lim in PAUC_LIMITS},
            "curve": _thin_curve(curve.discard_fractions, curve.fnmr),
        }
    return out


def _thin_curve(x: np.ndarray, y: np.ndarray, limit: float = 0.5, points: int = 201) -> dict[str, list[float]]:
    """The EDC resampled on a grid up to ``limit`` (the full curve can hold millions of points)."""
    grid = np.linspace(0.0, min(limit, float(x[-1])), points)
    return {"discard": grid.round(5).tolist(), "fnmr": np.interp(grid, x, y).round(6).tolist()}


def run_e1(
    models: Sequence[ModelRef],
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    angles: np.ndarray,
    out_dir: Path,
    *,
    seed: int = 0,
    start_fmr: float = 1e-3,
    data_note: str = "",
    command: str | None = None,
) -> dict[str, Any]:
    """Embeds the images once per model and writes report.md, results.json and the PNGs into ``out_dir``."""
    if len({m.name for m in models}) != len(models):
        raise ValueError(f"model names must be distinct, got {[m.name for m in models]}")
    report = Report(out_dir, "E1 — quality versus illumination (Extended Yale B)")
    labels, angles = np.asarray(labels), np.asarray(angles, dtype=np.float64)
    idx_a, idx_b, issame = every_pair(labels)
    n_imp = int((~issame).sum())
    report.figures.update(
        {
            "images": len(labels),
            "identities": int(len(np.unique(labels))),
            "genuine_pairs": int(issame.sum()),
            "impostor_pairs": n_imp,
            "start_fmr": start_fmr,
            "seed": seed,
            "models": {},
        }
    )
    report.add_models(models)
    _protocol(report, models, labels, issame, start_fmr, seed, data_note)
    sharp_cache: dict[tuple[int, int], np.ndarray] = {}
    rand = random_quality(len(labels), seed)
    results = {}
    for ref in models:
        e = embed_images(ref.net, images, ref.image_size)
        if ref.image_size not in sharp_cache:  # sharpness of the pixels the network sees
            sharp_cache[ref.image_size] = sharpness_quality(
                np.stack([contract.fit_to_size(i, ref.image_size) for i in images])
            )
        results[ref.name] = _evaluate_model(
            ref, e, sharp_cache[ref.image_size], rand, angles, labels, idx_a, idx_b, issame, start_fmr
        )
        report.figures["models"][ref.name] = results[ref.name]
    _write_results(report, models, results, angles)
    report.write(command)
    return report.figures


def _evaluate_model(
    ref: ModelRef,
    e: Embeddings,
    sharp: np.ndarray,
    rand: np.ndarray,
    angles: np.ndarray,
    labels: np.ndarray,
    idx_a: np.ndarray,
    idx_b: np.ndarray,
    issame: np.ndarray,
    start_fmr: float,
) -> dict[str, Any]:
    scores = np.einsum("nd,nd->n", e.emb[idx_a].astype(np.float64), e.emb[idx_b].astype(np.float64))
    norm = embedding_norm_quality(e.emb * e.raw_norm[:, None])
    measures = dict(zip(MEASURES, (e.quality, rand, norm, sharp)))
    return {
        "model": ref.describe(),
        "quality": quality_vs_angle(e.quality, angles),
        "spearman_vs_angle": {k: float(spearmanr(v, angles).statistic) for k, v in measures.items()},
        "quality_values": e.quality.round(5).tolist(),
        "verification": {
            "auc": auc(scores, issame),
            "tar_at_far": tar_at_far(scores, issame, VERIFY_FARS),
            "genuine_mean": float(scores[issame].mean()),
            "impostor_mean": float(scores[~issame].mean()),
        },
        "edc": edc_summary(scores, issame, idx_a, idx_b, measures, start_fmr),
    }


def _protocol(
    report: Report,
    models: Sequence[ModelRef],
    labels: np.ndarray,
    issame: np.ndarray,
    start_fmr: float,
    seed: int,
    data_note: str,
) -> None:
    n_imp = int((~issame).sum())
    report.section("Protocol")
    report.text(
        f"Data: {len(labels)} images of {len(np.unique(labels))} subjects. {data_note}".strip(),
        "Light angle = arccos(cos azimuth · cos elevation) from the file names; bands 0–25°, 25–50°, 50–80°, >80° "
        "(upper edge inclusive: 25° falls in 0–25°). Images are fitted to the network input exactly as in training "
        "(`fit_to_size`), embedded once per model; quality, embedding and the pre-normalisation norm come from the "
        "same forward pass.",
        f"Comparisons: every unordered pair of images (i < j): {int(issame.sum())} genuine, {n_imp} impostor. The "
        f"EDC threshold is fixed at start FMR {start_fmr:g} over all impostor comparisons: {n_imp} impostors allow "
        f"{int(np.floor(start_fmr * n_imp))} false matches, so the FMR is well supported (it needs ≥ "
        f"{int(np.ceil(1 / start_fmr))}). A comparison's quality is min(q_a, q_b); the lowest-quality comparisons are "
        "discarded and the FNMR of the kept genuine comparisons is measured at that fixed threshold. pAUC is "
        "normalised: the mean FNMR over discard fractions [0, limit] (lower is better).",
        f"Baselines: random = uniform [0, 1) from seed {seed}; embedding norm = L2 norm of the model's embedding "
        "before normalisation (MagFace-style; only its order matters); sharpness = variance of the Laplacian of the "
        "grey network input ("
        + ", ".join(sorted({f"{m.image_size[0]}×{m.image_size[1]}" for m in models}))
        + ", as fitted for the network).",
        f"Acceptance (issue 2): Spearman(quality, light angle) ≤ {ACCEPT_SPEARMAN} and quality std ≥ {ACCEPT_STD}.",
    )
    report.table(["model", "file", "training config"], [[m.name, m.describe(), m.config_note()] for m in models])


def _write_results(report: Report, models: Sequence[ModelRef], results: dict[str, Any], angles: np.ndarray) -> None:
    report.section("Acceptance: quality against light angle")
    rows = []
    for ref in models:
        q = results[ref.name]["quality"]
        verdict = "PASS" if q["accept_spearman"] and q["accept_std"] else "FAIL"
        rows.append([ref.name, f"{q['spearman']:+.3f}", f"{q['std']:.3f}", f"{q['mean']:.3f}", verdict])
    report.table(["model", "Spearman(q, angle)", "quality std", "quality mean", "≤ −0.5 and ≥ 0.1"], rows)
    report.section("Mean quality per light-angle band")
    report.table(
        ["model", *(f"{b} (n)" for b in BAND_LABELS)],
        [
            [
                ref.name,
                *(
                    f"{b['mean']:.3f} ± {b['std']:.3f} ({b['n']})" if b["n"] else "– (0)"
                    for b in results[ref.name]["quality"]["bands"]
                ),
            ]
            for ref in models
        ],
    )
    report.section("Recognition on Yale (all pairs), for context")
    report.text(
        "How well each network recognises these faces at all: the EDCs start from its FNMR at the fixed "
        "threshold (= 1 − TAR at the start FMR)."
    )
    report.table(
        ["model", "AUC", *(f"TAR@{fmt_far(x)} %" for x in VERIFY_FARS), "mean genuine cos", "mean impostor cos"],
        [
            [
                ref.name,
                f"{v['auc']:.4f}",
                *(fmt_pct(v["tar_at_far"][x]) for x in VERIFY_FARS),
                f"{v['genuine_mean']:.3f}",
                f"{v['impostor_mean']:.3f}",
            ]
            for ref in models
            for v in [results[ref.name]["verification"]]
        ],
    )
    report.section("Spearman against light angle, every measure")
    report.text("A useful quality falls as the angle grows (negative rho).")
    report.table(
        ["model", *MEASURES],
        [[ref.name, *(f"{results[ref.name]['spearman_vs_angle'][m]:+.3f}" for m in MEASURES)] for ref in models],
    )
    for ref in models:
        r = results[ref.name]
        report.section(f"EDC — {ref.name}")
        rows = [
            [
                m,
                *(f"{r['edc'][m]['fnmr_at_discard'][f'{d:g}']:.4f}" for d in DISCARD_POINTS),
                *(f"{r['edc'][m]['pauc_normalised'][f'{lim:g}']:.4f}" for lim in PAUC_LIMITS),
            ]
            for m in MEASURES
        ]
        report.table(
            [
                "quality measure",
                *(f"FNMR @ {int(100 * d)}% discarded" for d in DISCARD_POINTS),
                *(f"pAUC [0, {lim:g}] (norm.)" for lim in PAUC_LIMITS),
            ],
            rows,
        )
        report.text(_edc_verdict(r))
        report.image(
            _edc_figure(ref.name, r),
            f"edc_{_slug(ref.name)}.png",
            f"EDC (FNMR at fixed start-FMR threshold vs fraction discarded), {ref.name}",
        )
        report.image(
            _hist_figure(ref.name, r, band_index(angles)),
            f"quality_hist_{_slug(ref.name)}.png",
            f"Quality histogram per light-angle band, {ref.name}",
        )
        report.image(
            _scatter_figure(ref.name, np.asarray(r["quality_values"]), angles),
            f"quality_vs_angle_{_slug(ref.name)}.png",
            f"Quality against light angle, {ref.name}",
        )


def _edc_verdict(r: dict[str, Any]) -> str:
    """Which measure has the lowest pAUC, and by how much each baseline trails or leads the EQFace quality."""
    lines = []
    for lim in PAUC_LIMITS:
        pauc = {m: r["edc"][m]["pauc_normalised"][f"{lim:g}"] for m in MEASURES}
        best = min(MEASURES, key=pauc.get)
        margins = ", ".join(f"{m} {pauc[m] - pauc[MEASURES[0]]:+.4f}" for m in MEASURES[1:])
        lines.append(
            f"pAUC [0, {lim:g}]: lowest is **{best}**; baseline minus EQFace quality: {margins} "
            "(positive = the EQFace quality is better)."
        )
    return " ".join(lines)


def _slug(name: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in name).split()).lower()


def _edc_figure(name: str, r: dict[str, Any]):
    fig = new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    for m in MEASURES:
        c = r["edc"][m]["curve"]
        ax.plot(c["discard"], c["fnmr"], label=f"{m} (pAUC₀.₂ {r['edc'][m]['pauc_normalised']['0.2']:.3f})")
    for lim in PAUC_LIMITS:
        ax.axvline(lim, color="grey", lw=0.6, ls=":")
    ax.set(xlabel="fraction of comparisons discarded", ylabel="FNMR", xlim=(0, 0.5), title=f"EDC — {name}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _hist_figure(name: str, r: dict[str, Any], bands: np.ndarray):
    q = np.asarray(r["quality_values"])
    bands_info = r["quality"]["bands"]
    fig = new_figure(12, 3.2, layout="constrained")
    axes = fig.subplots(1, len(BAND_LABELS), sharey=False)
    for b, ax in enumerate(axes):
        ax.hist(q[bands == b], bins=20, range=(0, 1), color=f"C{b}")
        info = bands_info[b]
        mean = "–" if info["mean"] is None else f"{info['mean']:.2f}"
        ax.set_title(f"{BAND_LABELS[b]}: n={info['n']}, mean {mean}", fontsize=10)
        ax.set(xlabel="quality", xlim=(0, 1))
    axes[0].set_ylabel("images")
    fig.suptitle(f"Quality per light-angle band — {name}")
    return fig


def _scatter_figure(name: str, q: np.ndarray, angles: np.ndarray):
    fig = new_figure(6, 4)
    ax = fig.add_subplot()
    ax.scatter(angles, q, s=4, alpha=0.4)
    for edge in BAND_EDGES:
        ax.axvline(edge, color="grey", lw=0.6, ls=":")
    ax.set(xlabel="light angle (degrees)", ylabel="quality", ylim=(-0.02, 1.02), title=f"Quality vs light — {name}")
    ax.grid(alpha=0.3)
    return fig


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, NAME)
    p.add_argument("--run", type=Path, default=DEFAULT_RUN, help="training run folder (model.pt, step2-1/final.pt)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-quality baseline")
    p.add_argument("--start-fmr", type=float, default=1e-3, help="FMR that fixes the EDC threshold")
    args = p.parse_args(argv)
    from eqface.data.packs import light_angle_degrees, load_pack

    models = [
        load_model_ref(args.run / "model.pt", "final"),
        load_model_ref(args.run / "step2-1" / "final.pt", "step2-1"),
    ]
    yale = load_pack(args.data_dir / "extended_yale_b_cropped.npz")
    images = [yale.image(i) for i in range(len(yale))]
    note = (
        "`extended_yale_b_cropped.npz`, every normal image (flash-failed `.bad` and ambient images dropped by "
        "`load_pack`), aligned onto the ArcFace template by `load_pack` (`align_yale`). No image of Yale was "
        "used in training. Models: **final** = the run's `model.pt` (Steps 1 → 2 → 3 → 2: backbone retrained "
        "with quality weights, then a new quality branch); **step2-1** = after Steps 1 → 2 only (the pretrained "
        "backbone with a classifier and a quality branch: the paper's §5.2 case of quality on a fixed "
        "recogniser)."
    )
    figures = run_e1(
        models,
        images,
        yale.labels,
        light_angle_degrees(yale),
        args.out,
        seed=args.seed,
        start_fmr=args.start_fmr,
        data_note=note,
        command=command_line(f"experiments.{NAME}"),
    )
    print((args.out / "report.md").read_text())
    print(f"wrote {args.out} in {figures['runtime_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
