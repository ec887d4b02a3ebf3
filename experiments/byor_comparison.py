"""BYOR vs own: the imported pretrained recogniser (grafted with its EQFace quality head) against this project's own
MobileFaceNet, on recognition and on the FIQA benchmark.

(a) Recognition on CelebA held-out, Extended Yale B and ORL: 10-fold accuracy on balanced pairs, TAR@FAR and AUC on
every within-set pair (E2's `evaluate_set`), with paired differences (imported − own: accuracy over the same folds,
TAR by a paired bootstrap over the same pairs). (b) The FIQA benchmark (EDC pAUC with bootstrap 95 % intervals over
identities, `experiments.fiqa_benchmark`) run on each network; its own report per network lies in a sub-folder.
The imported model is measured as it is served: the grafted ONNX of `eqface byor export`, run by onnxruntime.

    .venv/bin/python -m experiments.byor_comparison --byor runs/byor --own runs/mfn-celeba/model.pt
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eqface.data.sources import FaceSource
from eqface.eval.pairs import every_pair
from experiments.common import (
    Report,
    _relative,
    command_line,
    diff_verdict,
    experiment_parser,
    fmt_far,
    fmt_pct,
    load_model_ref,
    new_figure,
)
from experiments.e2_qw_training import compare_arms, evaluate_set
from experiments.fiqa_benchmark import (
    LIMITS,
    MEASURES,
    SERFIQ_PASSES,
    START_FMR,
    FaceSet,
    load_sets,
    run_benchmark,
    verdict,
)
from experiments.networks import GraftedOnnxNetwork, MeasuredNetwork, TorchNetwork, unit_embeddings

NAME = "byor_comparison"
FARS = (1e-4, 1e-3, 1e-2)
HEADLINE_FAR = 1e-3
IMPORTED, OWN = "imported", "own"


def shared_held_out(own: FaceSource, imported: FaceSource) -> tuple[FaceSource, dict[str, Any]]:
    """The held-out faces both networks' training left out, and how the two held-out sets compare.

    Faces are matched by their pack names (file names); identical sets are used as they are, else their intersection.
    """
    own_names, imported_names = list(own.names), list(imported.names)
    info: dict[str, Any] = {
        "own_faces": len(own_names),
        "imported_faces": len(imported_names),
        "own_identities": own.num_classes,
        "imported_identities": imported.num_classes,
        "identical": own_names == imported_names,
    }
    if info["identical"]:
        return imported, {**info, "used_faces": len(imported_names), "used_identities": imported.num_classes}
    keep = set(own_names) & set(imported_names)
    picks = np.array([i for i, name in enumerate(imported_names) if name in keep], dtype=np.int64)
    if len(picks) == 0:
        raise ValueError("the two networks held out no face in common: no fair CelebA comparison is possible")
    shared = imported.subset(picks)
    return shared, {**info, "used_faces": len(shared), "used_identities": shared.num_classes}


def check_stored_fiqa(
    stored: dict[str, Any],
    network: MeasuredNetwork,
    sets: Sequence[FaceSet],
    *,
    seed: int,
    replicates: int,
    passes: int,
    start_fmr: float,
) -> None:
    """Refuses a stored FIQA run unless it measured ``network`` (same file hash) on the same sets and settings."""
    problems = []
    described = list(stored.get("model_files", {}).values())
    want = re.search(r"sha256 ([0-9a-f]{12})", network.describe())
    got = [re.search(r"sha256 ([0-9a-f]{12})", d) for d in described]
    if want is None or len(got) != 1 or got[0] is None or got[0].group(1) != want.group(1):
        problems.append(f"it measured {described}, not {network.describe()} (compared by file hash)")
    wanted = {"seed": seed, "replicates": replicates, "serfiq_passes": passes, "start_fmr": start_fmr}
    problems += [f"{k} {stored.get(k)} ≠ {v}" for k, v in wanted.items() if stored.get(k) != v]
    names = [s.name for s in sets]
    if list(stored.get("datasets", {})) != names:
        problems.append(f"its datasets {list(stored.get('datasets', {}))} ≠ {names}")
    else:
        problems += [
            f"{s.name}: {stored['datasets'][s.name]['images']} images ≠ {len(s.labels)}"
            for s in sets
            if stored["datasets"][s.name]["images"] != len(s.labels)
        ]
    if problems:
        raise ValueError("the stored FIQA run of the own network does not match: " + "; ".join(problems))


def recognition(
    networks: dict[str, MeasuredNetwork], sets: Sequence[FaceSet], seed: int, fars: Sequence[float] = FARS
) -> dict[str, Any]:
    """Per set: each network's E2 figures and the paired difference imported − own."""
    out: dict[str, Any] = {}
    for faces in sets:
        results, scores = {}, {}
        for name, network in networks.items():
            results[name], scores[name] = evaluate_set(unit_embeddings(network, faces.images), faces.labels, seed, fars)
        _, _, issame = every_pair(faces.labels)
        diff = compare_arms(results[OWN], results[IMPORTED], scores[OWN], scores[IMPORTED], issame, fars, seed)
        out[faces.name] = {"images": len(faces.labels), **results, "imported_minus_own": diff}
    return out


def run_comparison(
    imported: MeasuredNetwork,
    own: MeasuredNetwork,
    sets: Sequence[FaceSet],
    out_dir: Path,
    *,
    held_out_note: str,
    seed: int = 0,
    replicates: int = 1000,
    passes: int = SERFIQ_PASSES,
    start_fmr: float = START_FMR,
    fars: Sequence[float] = FARS,
    extra: dict[str, Any] | None = None,
    own_fiqa: dict[str, Any] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Both parts into ``out_dir`` (report.md, results.json, PNGs; the FIQA reports in ``fiqa_<network>/``).

    ``own_fiqa``: a stored FIQA benchmark run of the own network (its results.json, checked by ``check_stored_fiqa``)
    used instead of measuring it again.
    """
    if own_fiqa is not None:
        check_stored_fiqa(own_fiqa, own, sets, seed=seed, replicates=replicates, passes=passes, start_fmr=start_fmr)
    out_dir = Path(out_dir)
    report = Report(out_dir, "Imported pretrained recogniser (BYOR) vs this project's own MobileFaceNet")
    networks = {IMPORTED: imported, OWN: own}
    report.add_models(list(networks.values()))
    report.figures.update({"seed": seed, "replicates": replicates, "serfiq_passes": passes, "fars": list(fars)})
    report.figures.update(extra or {})
    clean = [s for s in sets if s.threshold_from is None]
    report.figures["recognition"] = recognition(networks, clean, seed, fars)
    fiqa = {}
    if own_fiqa is not None:
        fiqa[OWN] = own_fiqa
    for key, network in networks.items():
        if key in fiqa:
            continue
        fiqa[key] = run_benchmark(
            network,
            sets,
            out_dir / f"fiqa_{key}",
            seed=seed,
            replicates=replicates,
            passes=passes,
            start_fmr=start_fmr,
            command=command,
        )
    report.figures["fiqa"] = {key: {"datasets": f["datasets"], "runtime_s": f["runtime_s"]} for key, f in fiqa.items()}
    _write(report, networks, sets, held_out_note, fars)
    report.write(command)
    return report.figures


def _write(
    report: Report,
    networks: dict[str, MeasuredNetwork],
    sets: Sequence[FaceSet],
    held_out_note: str,
    fars: Sequence[float],
) -> None:
    figs = report.figures
    report.section("Protocol")
    report.text(
        *(f"- **{key}**: {network.describe()}" for key, network in networks.items()),
        f"CelebA held-out: {held_out_note}",
        "Recognition (E2's `evaluate_set`, `experiments/e2_qw_training.py`): 10-fold accuracy on balanced sampled "
        "pairs (up to 3000 + 3000), TAR at FAR and AUC on every within-set pair; faces fitted to each network's "
        "input, cosine of L2-normalised embeddings. Differences are imported − own: accuracy paired over the same "
        "folds (±2 SE), TAR by a paired bootstrap over the same pairs (E2's replicates).",
        f"FIQA (`experiments/fiqa_benchmark.py`, {figs['replicates']} bootstrap replicates over identities, SER-FIQ "
        f"with {figs['serfiq_passes']} passes): EDC pAUC (lower is better) of each network's own qualities on its "
        "own comparisons. On the imported model, `eqface` is the grafted head's quality, `embedding_norm` the norm "
        "of the recogniser's raw output, `ser_fiq` dropout (p 0.5) on the import's tap (the last spatial map) with "
        "the recogniser's own layers after it (the sub-graph tap → embedding of the served ONNX) run per pass. "
        "Full reports per network: " + ", ".join(f"[`fiqa_{k}/report.md`](fiqa_{k}/report.md)" for k in networks) + ".",
    )
    for key in ("byor_build", "parity", "held_out"):
        if key in figs:
            report.text(f"`{key}`: " + ", ".join(f"{k} = {v}" for k, v in figs[key].items()))
    report.section("Recognition")
    rows = []
    for name, r in figs["recognition"].items():
        for key in networks:
            rows.append(
                [
                    name,
                    key,
                    r["images"],
                    f"{100 * r[key]['accuracy']:.2f} ± {100 * r[key]['accuracy_std']:.2f}",
                    *(fmt_pct(r[key]["tar_at_far"][far]) for far in fars),
                    f"{r[key]['auc']:.4f}",
                ]
            )
    report.table(
        ["set", "network", "images", "accuracy % (10-fold)", *(f"TAR@FAR {fmt_far(f)} %" for f in fars), "AUC"], rows
    )
    report.section("Imported − own (paired)")
    rows = []
    for name, r in figs["recognition"].items():
        d = r["imported_minus_own"]
        lo, hi = d["accuracy_interval"]
        rows.append(
            [
                name,
                f"{100 * d['accuracy_diff']:+.2f} pts [{100 * lo:+.2f}, {100 * hi:+.2f}]",
                diff_verdict(d["tar_diff"][HEADLINE_FAR] or 0.0, d["tar_interval"][HEADLINE_FAR]),
                f"{d['auc_diff']:+.4f}",
            ]
        )
    report.table(["set", "accuracy (±2 SE)", f"TAR@FAR {fmt_far(HEADLINE_FAR)}", "AUC"], rows)
    for limit in LIMITS:
        report.section(f"FIQA: pAUC [0, {limit:g}] with 95 % intervals (lower is better)")
        rows = []
        for name in (s.name for s in sets):
            for key in networks:
                d = figs["fiqa"][key]["datasets"][name]["measures"]
                cells = [
                    f"{d[m][f'pauc_{limit:g}']:.4f} [{d[m][f'ci_{limit:g}'][0]:.4f}, {d[m][f'ci_{limit:g}'][1]:.4f}]"
                    for m in MEASURES
                ]
                rows.append([name, key, *cells])
        report.table(["dataset", "network", *MEASURES], rows)
    report.section("FIQA: does each network's EQFace quality beat its free signals?")
    report.text(
        "Paired 95 % interval of pAUC[0, 0.2] EQFace − peer over the same bootstrap replicates (below 0 = EQFace "
        "better on the same identities); **win** = the benchmark's strict criterion (non-overlapping marginal "
        "intervals)."
    )
    rows = []
    for name in (s.name for s in sets):
        for key in networks:
            d = figs["fiqa"][key]["datasets"][name]
            wins = verdict(d["measures"])
            cells = []
            for diff_name, v in d["paired_differences"].items():
                peer = diff_name.split("-", 1)[1]
                lo, hi = v["ci_0.2"]
                cells.append(f"{v['pauc_0.2']:+.4f} [{lo:+.4f}, {hi:+.4f}]{' **win**' if wins[peer] else ''}")
            rows.append([name, key, *cells])
    peers = list(next(iter(figs["fiqa"][IMPORTED]["datasets"].values()))["paired_differences"])
    report.table(["dataset", "network", *peers], rows)
    _figures(report, networks, fars)


def _figures(report: Report, networks: dict[str, MeasuredNetwork], fars: Sequence[float]) -> None:
    recog = report.figures["recognition"]
    fig = new_figure(5.0 * len(recog), 4.0)
    for k, (name, r) in enumerate(recog.items()):
        ax = fig.add_subplot(1, len(recog), k + 1)
        for key in networks:
            ax.plot(r[key]["roc"]["far"], r[key]["roc"]["tar"], label=key)
        ax.set_xscale("log")
        ax.set_xlim(max(min(fars) / 10, 1e-6), 1)
        ax.set_title(name)
        ax.set_xlabel("FAR")
        if k == 0:
            ax.set_ylabel("TAR")
            ax.legend()
    report.image(fig, "roc.png", "ROC per set: the imported recogniser and the own MobileFaceNet")
    fiqa = report.figures["fiqa"]
    names = list(fiqa[IMPORTED]["datasets"])
    fig = new_figure(11, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    bars = [(key, m) for key in networks for m in ("eqface", "embedding_norm", "ser_fiq")]
    width = 0.8 / len(bars)
    for j, (key, m) in enumerate(bars):
        d = [fiqa[key]["datasets"][n]["measures"][m] for n in names]
        est = np.array([v["pauc_0.2"] for v in d])
        low, high = np.array([v["ci_0.2"][0] for v in d]), np.array([v["ci_0.2"][1] for v in d])
        x = np.arange(len(names)) + j * width
        ax.bar(x, est, width, label=f"{key}: {m}", hatch="//" if key == OWN else None)
        ax.errorbar(x, est, yerr=[est - low, high - est], fmt="none", ecolor="k", capsize=2)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    ax.set_ylabel("pAUC [0, 0.2] (lower is better)")
    ax.legend(fontsize=7, ncol=2)
    report.image(fig, "pauc_ci.png", "pAUC[0, 0.2] with 95 % intervals: each network's quality and free signals")


def main(argv: Sequence[str] | None = None) -> int:
    p = experiment_parser(__doc__.splitlines()[0], NAME)
    p.add_argument("--byor", type=Path, required=True, help="the BYOR folder (import-onnx, byor step2, byor export)")
    p.add_argument("--byor-model", type=Path, help="its grafted ONNX (default: BYOR/model.onnx)")
    p.add_argument("--own", type=Path, required=True, help="this project's model.pt (eqface train)")
    p.add_argument("--replicates", type=int, default=1000, help="FIQA bootstrap replicates over identities")
    p.add_argument("--serfiq-passes", type=int, default=SERFIQ_PASSES, help="SER-FIQ stochastic passes")
    p.add_argument("--seed", type=int, default=0, help="seed of pairs, degradations, dropout masks and bootstrap")
    p.add_argument(
        "--own-fiqa",
        type=Path,
        help="results.json of a FIQA benchmark run of --own with the same settings (checked), reused instead of "
        "measuring the own network again",
    )
    args = p.parse_args(argv)
    imported = GraftedOnnxNetwork(args.byor, IMPORTED, args.byor_model)
    own = TorchNetwork(load_model_ref(args.own, OWN))
    held, info = shared_held_out(own.held_out(args.data_dir), imported.held_out(args.data_dir))
    note = (
        f"the own model's training held out {info['own_identities']} identities ({info['own_faces']} faces), the "
        f"imported model's Step 2 {info['imported_identities']} ({info['imported_faces']} faces); "
        + (
            "the same faces, matched by file name, so both are evaluated on them."
            if info["identical"]
            else f"they differ, so both are evaluated on the {info['used_faces']} faces "
            f"({info['used_identities']} identities) both held out."
        )
    )
    extra: dict[str, Any] = {"held_out": info, "parity": _parity(imported, held), "byor_build": _build(imported)}
    own_fiqa = None
    if args.own_fiqa is not None:
        if not info["identical"]:
            raise SystemExit("--own-fiqa needs the same CelebA held-out faces for both networks; they differ")
        own_fiqa = json.loads(args.own_fiqa.read_text())
        stored = args.own_fiqa.parent
        copy = args.out / f"fiqa_{OWN}"
        copy.mkdir(parents=True, exist_ok=True)
        for name in ("report.md", "results.json", *own_fiqa.get("pngs", [])):
            shutil.copyfile(stored / name, copy / name)  # the reused run's report travels with this one
        extra["fiqa_reports"] = {
            OWN: f"[`fiqa_{OWN}/report.md`](fiqa_{OWN}/report.md) (a copy of the stored run `{_relative(stored)}`, "
            f"git {own_fiqa['environment']['git_head']}, reused: same model file, settings and sets)"
        }
    run_comparison(
        imported,
        own,
        load_sets(imported, args.data_dir, args.seed, held_out=held),
        args.out,
        held_out_note=note,
        seed=args.seed,
        replicates=args.replicates,
        passes=args.serfiq_passes,
        extra=extra,
        own_fiqa=own_fiqa,
        command=command_line(f"experiments.{NAME}"),
    )
    print((args.out / "report.md").read_text())
    return 0


def _parity(imported: GraftedOnnxNetwork, held: FaceSource) -> dict[str, Any]:
    """The measured file against the original recogniser and the torch head (``eqface.byor.export``'s check)."""
    from eqface.byor.export import PARITY_BATCH_SIZES, measure_parity
    from eqface.byor.quality_training import load_head
    from eqface.byor.recogniser import Recogniser
    from eqface.byor.step2 import HEAD_FILE, STEP2_DIR
    from eqface.contract import fit_to_size

    picks = np.linspace(0, len(held) - 1, 4 * max(PARITY_BATCH_SIZES)).astype(np.int64)
    images = np.stack([fit_to_size(held.image(int(i)), imported.image_size) for i in picks])
    head = load_head(imported.folder / STEP2_DIR / HEAD_FILE)
    return measure_parity(imported.path, Recogniser(imported.folder), head, images).to_dict()


def _build(imported: GraftedOnnxNetwork) -> dict[str, Any]:
    step2 = imported.step2
    return {
        "step2_feature_seconds": round(step2["feature_seconds"], 1),
        "step2_training_seconds": round(step2["step2_seconds"], 1),
        "train_faces": step2["train_faces"],
        "train_identities": step2["train_identities"],
    }


if __name__ == "__main__":
    raise SystemExit(main())
