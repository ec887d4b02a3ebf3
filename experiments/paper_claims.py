"""The paper's published figures that E3 and E4 answer (EQFace, /work/shared/reference/eqface-paper.md), quoted.

Kept as data so each report prints the paper's claim beside ours from one copy; numbers are the paper's, in percent.
"""

from __future__ import annotations

SECTION = "The paper's claim beside ours"

# Table 1, YTF column: verification accuracy (%) of the QW-trained model, first 100 frames of each video aggregated.
TABLE1_YTF: dict[str, float] = {
    "QW (plain average of the frames)": 98.02,
    "QWFA": 98.12,
    "QWFAF, s_th=0.1": 98.12,
    "QWFAF, s_th=0.2": 98.12,
    "QWFAF, s_th=0.3": 98.18,
}

TABLE2_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
# Table 2, second panel: 1:1 template verification TAR (%) at FAR 1e-6 … 1e-2, (IJB-B row, IJB-C row).
TABLE2: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "QW (no quality aggregation)": ((41.90, 89.62, 94.51, 96.48, 97.62), (81.41, 93.01, 95.84, 97.39, 98.30)),
    "QWFA": ((46.61, 91.87, 94.88, 96.31, 97.24), (90.22, 94.93, 96.38, 97.45, 98.22)),
    "QWFAF, s_th=0.1": ((47.34, 91.87, 94.86, 96.31, 97.24), (90.23, 94.93, 96.38, 97.45, 98.22)),
    "QWFAF, s_th=0.2": ((47.30, 91.92, 94.87, 96.32, 97.24), (90.22, 94.93, 96.38, 97.45, 98.22)),
    "QWFAF, s_th=0.3": ((47.11, 91.82, 94.85, 96.27, 97.25), (90.21, 94.93, 96.37, 97.46, 98.21)),
}

E3_CLAIM = (
    "The paper (§4.2–4.3) reports that quality-weighted aggregation helps on real video templates: on YTF, QWFA "
    "raises accuracy from 98.02 % (plain average, QW model) to 98.12 %, and QWFAF with s_th = 0.3 to 98.18 % "
    "(Table 1, +0.10 and +0.16 points). On IJB-B/C (Table 2) QWFA/QWFAF give 'noticeable performance gains for FAR "
    "at 1E-4 and lower, while give small performance losses for FAR at 1E-3 and 1E-2' — e.g. IJB-C TAR@1e-6 81.41 → "
    "90.22 %, TAR@1e-3 97.39 → 97.45 %, IJB-B TAR@1e-3 96.48 → 96.31 %. The three QWFAF thresholds differ from QWFA "
    "by at most 0.73 points anywhere. The paper gives no confidence intervals, and its templates are real video "
    "frames and photos, not synthetic degradations."
)

E4_CLAIM = (
    "The paper (§5, Eq. 8–9, Fig. 5) gives **no numeric figure** for progressive aggregation: only ROC curves on a "
    "VGGFace2-test protocol (300 enrolled identities, 300 distractor identities, a 1500 × 3000 reference × query "
    "similarity matrix), and the sentences 'a properly selected face quality threshold can help improve the face "
    "recognition accuracy significantly. In contrast, an inappropriate quality threshold may degrade the "
    "performance' and 'In our experiment, f_th = 0.5, and s_th = 0.3 gives the best results.' It does not say how "
    "the pair was chosen, nor whether it was chosen on data separate from the curves it reports; its text also "
    "counts 50 reference images for each of 300 identities yet calls them 1500 (we cannot tell which is meant)."
)


def table2_markdown() -> str:
    """The paper's Table 2 rows for QW, QWFA and QWFAF as a markdown table (IJB-B and IJB-C side by side)."""
    fars = [f"{far:.0e}".replace("e-0", "e-") for far in TABLE2_FARS]
    header = ["paper, Table 2", *(f"IJB-B {f}" for f in fars), *(f"IJB-C {f}" for f in fars)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, (ijbb, ijbc) in TABLE2.items():
        lines.append("| " + " | ".join([name, *(f"{x:.2f}" for x in (*ijbb, *ijbc))]) + " |")
    return "\n".join(lines)


def table1_markdown() -> str:
    """The paper's Table 1 YTF rows for QW, QWFA and QWFAF as a markdown table."""
    lines = ["| paper, Table 1 | YTF accuracy % | vs plain average |", "|---|---|---|"]
    base = TABLE1_YTF["QW (plain average of the frames)"]
    for name, acc in TABLE1_YTF.items():
        lines.append(f"| {name} | {acc:.2f} | {acc - base:+.2f} |")
    return "\n".join(lines)
