"""Fig. 4: faces with their predicted quality, sorted; the official EQFace test faces (blurred, occluded, profile)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.common import (
    ModelRef,
    Report,
    command_line,
    embed_images,
    experiment_parser,
    load_model_ref,
    new_figure,
)

NAME = "fig4_quality_grid"


def pick_evenly(order: np.ndarray, n: int) -> np.ndarray:
    """``n`` entries of ``order`` at evenly spaced ranks, first and last included (all of them when n ≥ len)."""
    if n >= len(order):
        return order
    return order[np.unique(np.round(np.linspace(0, len(order) - 1, n)).astype(int))]


def run_fig4(
    ref: ModelRef,
    images: Sequence[np.ndarray],
    names: Sequence[str],
    out_dir: Path,
    *,
    columns: int = 8,
    shown: int = 48,
    data_note: str = "",
    command: str | None = None,
) -> dict[str, Any]:
    report = Report(out_dir, "Fig. 4 — face images and their predicted quality")
    q = embed_images(ref.net, images, ref.image_size).quality
    order = np.argsort(q, kind="stable")
    picked = pick_evenly(order, shown)
    report.figures.update(
        {
            "model": ref.describe(),
            "images": len(images),
            "shown": len(picked),
            "quality": {
                "mean": float(q.mean()),
                "std": float(q.std()),
                "min": float(q.min()),
                "max": float(q.max()),
                "percentiles": {str(p): float(np.percentile(q, p)) for p in (5, 25, 50, 75, 95)},
            },
            "all_sorted": [{"name": str(names[i]), "quality": round(float(q[i]), 5)} for i in order],
        }
    )
    report.add_models([ref])
    report.section("Protocol")
    report.text(
        f"Model: {ref.describe()}; {ref.config_note()}. {len(images)} faces. {data_note}",
        f"Every face is scored once (input fitted to {ref.image_size[0]}×{ref.image_size[1]} as in training). "
        f"The grid shows {len(picked)} faces at evenly spaced quality ranks, lowest first (read left to right, top "
        "to bottom); results.json lists all faces with their quality, sorted.",
    )
    report.section("Quality distribution")
    qs = report.figures["quality"]
    report.table(
        ["mean", "std", "min", "p5", "p25", "p50", "p75", "p95", "max"],
        [
            [
                f"{qs['mean']:.3f}",
                f"{qs['std']:.3f}",
                f"{qs['min']:.3f}",
                *(f"{v:.3f}" for v in qs["percentiles"].values()),
                f"{qs['max']:.3f}",
            ]
        ],
    )
    report.section("Lowest and highest five")
    report.table(
        ["rank", "face", "quality"],
        [[k + 1, names[i], f"{q[i]:.3f}"] for k, i in enumerate(order[:5])]
        + [[len(order) - 4 + k, names[i], f"{q[i]:.3f}"] for k, i in enumerate(order[-5:])],
    )
    report.section("Grid")
    report.image(
        _grid(images, q, picked, columns),
        "quality_grid.png",
        "Faces sorted by predicted quality (value under each face)",
        dpi=80,
    )
    report.write(command)
    return report.figures


def _grid(images: Sequence[np.ndarray], q: np.ndarray, picked: np.ndarray, columns: int):
    rows = int(np.ceil(len(picked) / columns))
    fig = new_figure(1.35 * columns, 1.6 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, picked):
        img = images[i]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(f"{q[i]:.2f}", y=-0.2, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.35)
    return fig


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, NAME, model_help="model to score the faces with")
    p.add_argument("--shown", type=int, default=48, help="faces in the grid (evenly spaced quality ranks)")
    args = p.parse_args(argv)
    from eqface.data.packs import load_pack

    ref = load_model_ref(args.model, "final model.pt")
    faces = load_pack(args.data_dir / "eqface_test_faces_lfw320.npz")
    images = [faces.image(i) for i in range(len(faces))]
    names = [n.split(":", 1)[1] for n in faces.names]
    note = (
        "`eqface_test_faces_lfw320.npz`: the 320 official EQFace `test_faces` (112×112 RGB JPEG from LFW, many "
        "blurred, occluded or in profile); never used in training."
    )
    figures = run_fig4(
        ref, images, names, args.out, shown=args.shown, data_note=note, command=command_line(f"experiments.{NAME}")
    )
    print((args.out / "report.md").read_text())
    print(f"wrote {args.out} in {figures['runtime_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
