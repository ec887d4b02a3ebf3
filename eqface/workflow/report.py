"""The evaluate step's report: plots (ROC, quality by condition, EDC, training curves) in one self-contained HTML
page for the Kubeflow UI's HTML viewer, and the same tables as Markdown.

Figures are drawn with matplotlib's object API (no pyplot state, no display needed) and embedded as base64 PNG.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from eqface.train.heldout import EDC_DISCARD_LIMIT, HeldOutEvaluation


@dataclass(frozen=True)
class Table:
    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<h3>{html.escape(self.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def tables(
    ev: HeldOutEvaluation, values: dict[str, float], gate_lines: Sequence[str], run: dict[str, Any]
) -> list[Table]:
    verification = [
        ("held-out identities / images", f"{ev.identities} / {ev.images}"),
        ("genuine / impostor pairs", f"{ev.genuine_pairs} / {ev.impostor_pairs}"),
        ("10-fold verification accuracy", f"{100 * ev.accuracy:.2f}% ± {100 * ev.accuracy_std:.2f}"),
        ("ROC AUC", f"{ev.auc:.4f}"),
    ]
    verification += [
        (f"TAR @ FAR {far:g}", "n/r (too few impostor pairs)" if tar is None else f"{100 * tar:.2f}%")
        for far, tar in ev.tar.items()
    ]
    quality = [
        (kind, *(f"{v:.3f}" for v in (qs.mean(), qs.std(), np.percentile(qs, 5), np.percentile(qs, 95))))
        for kind, qs in ev.quality.items()
    ]
    edc_rows = [("start FMR", "n/a (too few impostor pairs)")]
    if ev.edc is not None:
        edc_rows = [
            ("start FMR", f"{ev.edc.start_fmr:g}"),
            (f"pAUC to {EDC_DISCARD_LIMIT:.0%} discard, EQFace quality", f"{values['edc_pauc']:.4f}"),
            (f"pAUC to {EDC_DISCARD_LIMIT:.0%} discard, random quality", f"{values['edc_pauc_random']:.4f}"),
        ]
    if ev.spearman is not None:
        edc_rows.append(("Spearman(quality, synthetic degradation strength)", f"{ev.spearman:+.3f}"))
    return [
        Table("Run", ("setting", "value"), [(k, str(v)) for k, v in run.items()]),
        Table("Deployment gate", ("check",), [(line,) for line in gate_lines]),
        Table("Verification (held-out identities)", ("measure", "value"), verification),
        Table(
            "Quality by condition (degradations at strength 0.7)", ("condition", "mean", "std", "p5", "p95"), quality
        ),
        Table("Quality as a predictor of errors (EDC)", ("measure", "value"), edc_rows),
    ]


def selection_table(evaluations: dict[str, HeldOutEvaluation], chosen: str, far: float) -> Table:
    """The candidate models side by side, the deployed one marked (rule: eqface.workflow.evaluation)."""
    rows = []
    for name, ev in evaluations.items():
        tar = ev.tar.get(far)
        rows.append(
            (
                name + (" (deployed)" if name == chosen else ""),
                f"{100 * ev.accuracy:.2f}%",
                "n/r" if tar is None else f"{100 * tar:.2f}%",
                f"{ev.auc:.4f}",
            )
        )
    header = ("model", "10-fold accuracy", f"TAR @ FAR {far:g}", "ROC AUC")
    return Table(f"Model selection (higher TAR @ FAR {far:g}, ties: accuracy)", header, rows)


def figures(ev: HeldOutEvaluation, history: list[dict[str, Any]]) -> dict[str, Figure]:
    out = {"ROC on held-out pairs": _roc(ev), "Quality by condition": _quality(ev)}
    if ev.edc is not None:
        out["Error versus discard (EDC)"] = _edc(ev)
    if ev.degradation is not None:
        out["Quality vs synthetic degradation strength"] = _quality_vs_degradation(ev)
    if history:
        out["Training history"] = _history(history)
    return out


def png_base64(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def render_html(title: str, table_list: list[Table], figs: dict[str, Figure]) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>"] + [t.html() for t in table_list]
    for name, fig in figs.items():
        parts.append(
            f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' "
            f"src='data:image/png;base64,{png_base64(fig)}'/>"
        )
    style = (
        "body{font-family:sans-serif;margin:1.5em;max-width:1000px}"
        "table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}img{max-width:100%}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )


def render_markdown(title: str, table_list: list[Table]) -> str:
    body = "\n\n".join(t.markdown() for t in table_list)
    return f"# {title}\n\n{body}\n\nPlots: the HTML report of the same step.\n"


# ------------------------------------------------------------------------------------------------------ figures
def _figure(width: float = 6.0, height: float = 4.0) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def _roc(ev: HeldOutEvaluation) -> Figure:
    fig, ax = _figure()
    far = np.maximum(ev.roc.far, 1.0 / max(ev.roc.n_impostor, 1) / 2)  # FAR 0 on a log axis
    ax.plot(far, ev.roc.tar, lw=2)
    ax.set(
        xscale="log",
        xlabel="false accept rate",
        ylabel="true accept rate",
        ylim=(0, 1.01),
        title=f"AUC {ev.auc:.4f}, accuracy {100 * ev.accuracy:.2f}%",
    )
    ax.grid(alpha=0.3)
    return fig


def _quality(ev: HeldOutEvaluation) -> Figure:
    fig = Figure(figsize=(10, 4))
    hist, bars = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    bins = np.linspace(0, 1, 21)
    for kind, qs in ev.quality.items():
        hist.hist(qs, bins=bins, histtype="step", lw=2 if kind == "clean" else 1, label=kind)
    hist.set(xlabel="quality s", ylabel="images", title="distribution")
    hist.legend(fontsize=8)
    kinds = list(ev.quality)
    means = [ev.quality[k].mean() for k in kinds]
    errors = [ev.quality[k].std() for k in kinds]
    bars.bar(kinds, means, yerr=errors, color=["tab:green"] + ["tab:orange"] * (len(kinds) - 1))
    bars.set(ylim=(0, 1), ylabel="mean quality (± std)", title="mean by condition")
    bars.tick_params(axis="x", rotation=30)
    return fig


def _edc(ev: HeldOutEvaluation) -> Figure:
    fig, ax = _figure()
    ax.plot(ev.edc.discard_fractions, ev.edc.fnmr, lw=2, label="EQFace quality")
    ax.plot(ev.edc_random.discard_fractions, ev.edc_random.fnmr, lw=1, ls="--", label="random quality")
    ax.set(
        xlim=(0, 0.5),
        xlabel="fraction of comparisons discarded (lowest quality first)",
        ylabel=f"FNMR at FMR {ev.edc.start_fmr:g}",
    )
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def _quality_vs_degradation(ev: HeldOutEvaluation) -> Figure:
    fig, ax = _figure()
    ax.scatter(ev.degradation, ev.quality["clean"], s=8, alpha=0.6)
    ax.set(
        xlabel="degradation strength (0 = clean)", ylabel="quality s", ylim=(0, 1), title=f"Spearman {ev.spearman:+.3f}"
    )
    return fig


def _history(history: list[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(10, 4))
    loss, acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    stages = list(dict.fromkeys(r["stage"] for r in history))
    x0 = 0
    for stage in stages:
        records = [r for r in history if r["stage"] == stage]
        x = np.arange(x0 + 1, x0 + len(records) + 1)
        loss.plot(x, [r["loss"] for r in records], marker="o", ms=3, label=stage)
        acc.plot(x, [r["accuracy"] for r in records], marker="o", ms=3, label=f"{stage} accuracy")
        if "quality_mean" in records[0]:
            acc.plot(x, [r["quality_mean"] for r in records], ls="--", marker="x", ms=4, label=f"{stage} mean quality")
        x0 += len(records)
    loss.set(xlabel="epoch (all steps in order)", ylabel="training loss", title="loss")
    acc.set(xlabel="epoch (all steps in order)", ylim=(0, 1.01), title="training accuracy and quality")
    loss.legend(fontsize=8)
    acc.legend(fontsize=7)
    return fig
