"""E4's report: protocol, validation sweep, test rows per degradation family, and the paper's claim beside ours."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from eqface.eval.roc import format_tar_header, format_tar_row, roc_curve
from experiments.common import ModelRef, Report, diff_verdict, fmt_far, new_figure
from experiments.degraded_frames import FAMILY_LABELS, FAMILY_SOURCES, HELD_OUT, TRAINING, family_kinds
from experiments.e4_rows import BASELINE, NO_GATES, RUNNING_MEAN, STRICT, chosen_name, paper_name
from experiments.paper_claims import E4_CLAIM, SECTION


def write_report(
    report: Report,
    ref: ModelRef,
    labels: np.ndarray,
    curves: dict[str, tuple[dict[str, np.ndarray], np.ndarray]],
    fars: Sequence[float],
    data_note: str,
) -> None:
    """Adds every E4 section to ``report`` from ``report.figures`` (and the test ROC curves per family)."""
    _protocol(report, ref, labels, data_note)
    _summary(report)
    for family, (pooled, issame) in curves.items():
        _validation(report, family, fars)
        _test(report, family, pooled, issame, fars)
    _paper(report)


def _protocol(report: Report, ref: ModelRef, labels: np.ndarray, data_note: str) -> None:
    f = report.figures
    split = f["split"]
    report.section("Protocol (what is compared with what)")
    report.text(
        f"Model: {ref.describe()}; {ref.config_note()}. Data: {len(labels)} images of "
        f"{len(np.unique(labels))} identities. {data_note}",
        f"**Validation/test split by identity**: the identities are shuffled with `default_rng({split['seed']})` "
        f"(--split-seed) and divided into {len(split['validation_ids'])} validation identities "
        f"{split['validation_ids']} and {len(split['test_ids'])} test identities {split['test_ids']} (disjoint; "
        "no image, reference, query or distractor is shared). The f_th × s_th sweep runs on the validation "
        f"identities only; the pair is chosen by one rule, stated before the run: {f['choice_rule']}. The test "
        "identities see only the chosen pair, the paper's pair, no fusion, three references"
        + (" and the given (calibrated) pair" if f["given"] else " (no calibrated pair given: --f-th/--s-th)")
        + "; no test figure takes part in the choice.",
        f"Within a split, each of {f['repeats']} repeats (seeded `default_rng([seed, split, repeat])`, seed "
        f"{f['seed']}) shuffles the split's identities: half are enrolled, half are distractors. An enrolled "
        f"identity gives up to {f['refs_per_id']} reference images and up to {f['queries_per_id']} other "
        f"(disjoint) images as its query video; a distractor gives up to {f['queries_per_id']} query images and no "
        f"reference. Query frames are shuffled, and each is degraded with probability {f['degrade_p']}; reference "
        "images stay as they are.",
        "Two degradation families, reported apart. Both use the same generator seeds, so they draw the same "
        "enrolments and degrade the same query frames; only the degradation differs:",
        *(
            f"- **{FAMILY_LABELS[fam]}** (`{fam}`): {', '.join(family_kinds(fam))} — {FAMILY_SOURCES[fam]}"
            + (f", strength uniform in {list(f['strength'])}." if fam == TRAINING else ".")
            for fam in f["families"]
        ),
        "Comparison: every reference image (its own embedding) against every query frame, the paper's reference × "
        "query similarity matrix. The query frame i of a video is represented by: **baseline** — its own embedding "
        "f_i (no fusion); **f_th, s_th** — the progressive QWFA template F_i after frames 1..i of its video "
        "(Eq. 8–9, `eqface.aggregation.ProgressiveQWFA`; a low-quality first frame is replaced by the first later "
        "frame above s_th, the library's default); **paper-strict seed** — the same at the paper's pair but the "
        "first frame is kept whatever its quality (as Eq. 8 is written); **Eq. 7 running QWFA** — gates off, the "
        "quality-weighted mean of frames 1..i; **running mean** — gates off and all s = 1. Every row scores the "
        f"same pairs; only the query representation changes. Paired differences: bootstrap ({f['bootstrap_reps']} "
        "replicates, genuine and impostor pairs resampled separately), 95% percentile interval.",
    )


def _summary(report: Report) -> None:
    f = report.figures
    far = f["select_far"]
    report.section(f"Does the gain hold on the held-out families? (test split, TAR@{fmt_far(far)})")
    rows = []
    for fam, fig in f["families"].items():
        for name in _summary_comparisons(fig):
            c = fig["test"]["comparisons"][name]
            d = c["tar_diff"][far]
            rows.append([fig_label(fam), name, "n/r" if d is None else diff_verdict(d, c["interval"][far])])
    report.table(["family", "test rows (b vs a)", f"TAR@{fmt_far(far)} difference"], rows)
    if TRAINING in f["families"] and HELD_OUT in f["families"]:
        report.text(*_plain(f, far))


def _summary_comparisons(fig: dict[str, Any]) -> list[str]:
    """Fusion against no fusion (chosen and paper pairs), and what quality adds to fusion (against the running mean)."""
    chosen = chosen_name(fig["chosen"])
    return [
        f"{chosen} vs {BASELINE}",
        f"{paper_name()} vs {BASELINE}",
        f"{chosen} vs {RUNNING_MEAN}",
        f"{NO_GATES} vs {RUNNING_MEAN}",
    ]


def fig_label(family: str) -> str:
    return f"`{family}`: {FAMILY_LABELS[family]}"


def _tag(c: dict[str, Any], far: float) -> str:
    d, interval = c["tar_diff"][far], c["interval"][far]
    if d is None or interval is None:
        return "not reachable"
    lo, hi = interval
    return "within noise" if lo <= 0 <= hi else ("better" if lo > 0 else "worse")


def _plain(f: dict[str, Any], far: float) -> list[str]:
    labels = (
        "The pair chosen on validation, against no fusion,",
        "The paper's pair, against no fusion,",
        "The pair chosen on validation, against the running mean without quality (what the quality adds),",
        "Quality weighting without gates (Eq. 7), against the running mean without quality,",
    )
    lines = []
    for i, label in enumerate(labels):
        tags = {
            fam: _tag(fig["test"]["comparisons"][_summary_comparisons(fig)[i]], far)
            for fam, fig in f["families"].items()
        }
        train, held = tags[TRAINING], tags[HELD_OUT]
        if train == "better" and held == "better":
            what = "is better under both families: the gain **holds** on the held-out families"
        elif train == "better":
            what = (
                "is better under the training family only: the gain **does not hold** on the held-out families "
                f"({held} there)"
            )
        elif held == "better":
            what = f"is better under the held-out families only (training family: {train})"
        else:
            what = f"is not better under either family (training: {train}; held-out: {held})"
        lines.append(f"- {label} {what}.")
    return lines


def _validation(report: Report, family: str, fars: Sequence[float]) -> None:
    fig = report.figures["families"][family]
    val = fig["validation"]
    report.section(f"{FAMILY_LABELS[family]} — validation identities: the f_th × s_th sweep (choosing)")
    report.text(
        f"{len(val['identities'])} identities; {val['genuine_pairs']} genuine and {val['impostor_pairs']} impostor "
        f"pairs pooled over repeats. Chosen: **{fig['chosen']}** ({report.figures['choice_rule']})."
    )
    report.table(*_rows_table(val, fars))


def _test(
    report: Report, family: str, pooled: dict[str, np.ndarray], issame: np.ndarray, fars: Sequence[float]
) -> None:
    f = report.figures
    test = f["families"][family]["test"]
    label = FAMILY_LABELS[family]
    c = test["counts"]
    report.section(f"{label} — test identities (reporting)")
    report.text(
        f"{len(test['identities'])} identities; totals over repeats: {c['reference']} reference images, "
        f"{c['query']} query frames ({c['enrolled_ids']} enrolled and {c['distractor_ids']} distractor identity "
        f"draws); {test['genuine_pairs']} genuine and {test['impostor_pairs']} impostor pairs."
    )
    table = "\n".join(
        [
            format_tar_header(fars, "query representation"),
            *(format_tar_row(n, test["results"][n]["tar_at_far"]) for n in pooled),
        ]
    )
    report.lines += [table, ""]
    test["table_markdown"] = table
    report.table(*_rows_table(test, fars, tars=False))
    report.text(
        f"Paired differences on the test identities (b − a; {label}):",
        *(
            f"- **{name}**: "
            + "; ".join(
                f"@{fmt_far(x)} {diff_verdict(d, cmp['interval'][x])}"
                for x, d in cmp["tar_diff"].items()
                if d is not None
            )
            + f"; AUC {cmp['auc_diff']:+.5f}."
            for name, cmp in test["comparisons"].items()
        ),
    )
    report.table(
        ["query frames (test)", "n", "mean quality", "std"],
        [[k, v["n"], f"{v['mean']:.3f}", f"{v['std']:.3f}"] for k, v in test["quality_by_condition"].items()],
    )
    report.image(
        _roc_figure(pooled, issame, label),
        f"roc_progressive_{family}.png",
        f"ROC of reference × query comparisons on the test identities (cf. the paper's Fig. 5) — {label}",
    )


def _rows_table(split: dict[str, Any], fars: Sequence[float], tars: bool = True) -> tuple[list[str], list[list[str]]]:
    headers = ["query representation", *(f"TAR@{fmt_far(x)} %" for x in fars if tars), "AUC", "frames merged"]
    rows = []
    for n, r in split["results"].items():
        merged = split["merged_fraction"].get(n)
        rows.append(
            [
                n,
                *(("n/r" if r["tar_at_far"][x] is None else f"{100 * r['tar_at_far'][x]:.2f}") for x in fars if tars),
                f"{r['auc']:.5f}",
                "–" if merged is None else f"{100 * merged:.0f}%",
            ]
        )
    return headers, rows


def _paper(report: Report) -> None:
    f = report.figures
    far = f["select_far"]
    report.section(SECTION)
    report.text(E4_CLAIM)
    rows = []
    for fam, fig in f["families"].items():
        res = fig["test"]["results"]
        base = res[BASELINE]["tar_at_far"][far]
        for name in (paper_name(), chosen_name(fig["chosen"]), NO_GATES, RUNNING_MEAN, STRICT):
            t = res[name]["tar_at_far"][far]
            d = None if t is None or base is None else t - base
            rows.append(
                [f"`{fam}`", name, "n/r" if t is None else f"{100 * t:.2f}", "n/r" if d is None else f"{100 * d:+.2f}"]
            )
    report.table(["family", "test row", f"TAR@{fmt_far(far)} %", "vs no fusion (pts)"], rows)
    paper_pair = paper_name().removeprefix("paper default: ")
    same = [fam for fam, fig in f["families"].items() if fig["chosen"] == paper_pair]
    report.text(
        "The paper's pair (f_th 0.5, s_th 0.3) was "
        + (f"also our validation choice for {', '.join(same)}" if same else "not our validation choice for any family")
        + ". The paper shows its curves without stating how the pair was chosen; here the choice is made on "
        "validation identities and the figures above are on disjoint test identities."
    )


def _roc_figure(pooled: dict[str, np.ndarray], issame: np.ndarray, label: str):
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    fig = new_figure(7.5, 5.5)
    ax = fig.add_subplot()
    for i, (n, s) in enumerate(pooled.items()):
        c = roc_curve(s, issame)
        style = {"color": "black", "lw": 2.0} if n == BASELINE else {"color": palette(i % 10), "lw": 1.2}
        if n in (NO_GATES, RUNNING_MEAN, STRICT):
            style["ls"] = "--"
        ax.plot(np.maximum(c.far, 1e-6), c.tar, label=n, **style)
    ax.set(
        xscale="log", xlim=(1e-5, 1), xlabel="FAR", ylabel="TAR", title=f"Progressive QWFA, test identities\n{label}"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    return fig
