"""1:1 verification ROC: TAR at fixed FAR (the IJB-B/C protocol), area under the curve, and table formatting."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn import metrics

from eqface.eval.pairs import check_scores

DEFAULT_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
NOT_REACHABLE = "n/r"
RATE_TOLERANCE = 1e-9  # so that FAR 1e-3 with 1000 impostors allows exactly one false accept despite rounding


@dataclass(frozen=True)
class RocCurve:
    """Every operating point of "accept iff score >= threshold", from strictest (threshold inf) to laxest.

    Attributes:
        far: false accept rate at each threshold (non-decreasing).
        tar: true accept rate at each threshold (non-decreasing).
        thresholds: the thresholds, decreasing; the first is inf (nothing accepted).
        n_genuine: number of genuine pairs.
        n_impostor: number of impostor pairs.
    """

    far: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray
    n_genuine: int
    n_impostor: int


def roc_curve(scores: np.ndarray, issame: np.ndarray) -> RocCurve:
    """The full ROC (``sklearn.metrics.roc_curve`` with every threshold kept).

    Raises:
        ValueError: on invalid input or when genuine or impostor pairs are missing.
    """
    scores, issame = check_scores(scores, issame)
    n_genuine = int(issame.sum())
    if n_genuine == 0 or n_genuine == len(issame):
        raise ValueError(f"ROC needs genuine and impostor pairs, got {n_genuine} genuine of {len(issame)}")
    far, tar, thresholds = metrics.roc_curve(issame, scores, drop_intermediate=False)
    return RocCurve(far, tar, thresholds, n_genuine, len(issame) - n_genuine)


def auc(scores: np.ndarray, issame: np.ndarray) -> float:
    """Area under the ROC: the probability that a random genuine pair outscores a random impostor pair (ties ½)."""
    curve = roc_curve(scores, issame)
    return float(metrics.auc(curve.far, curve.tar))


def max_false_accepts(rate: float, n_impostor: int) -> int | None:
    """How many false accepts a target rate allows among ``n_impostor`` attempts: floor(rate·n).

    Returns None when the rate is not reachable, that is when ``n_impostor < 1 / rate``: with fewer impostors the
    smallest non-zero empirical rate, 1/n, is already above the target, so the measurement would only say "zero
    false accepts", not "a rate of ``rate``".

    Raises:
        ValueError: unless 0 < rate <= 1 and n_impostor >= 0.
    """
    if not 0 < rate <= 1 or n_impostor < 0:
        raise ValueError(f"need 0 < rate <= 1 and n_impostor >= 0, got rate={rate}, n_impostor={n_impostor}")
    allowed = math.floor(rate * n_impostor + RATE_TOLERANCE)
    return allowed if allowed >= 1 else None


def _operating_point(curve: RocCurve, far: float) -> int | None:
    """Index of the laxest threshold whose empirical FAR is <= far, or None when far is not reachable."""
    allowed = max_false_accepts(far, curve.n_impostor)
    if allowed is None:
        return None
    false_accepts = np.rint(curve.far * curve.n_impostor)
    return int(np.searchsorted(false_accepts, allowed, side="right") - 1)


def threshold_at_far(scores: np.ndarray, issame: np.ndarray, far: float) -> float | None:
    """The lowest threshold t such that accepting "score >= t" gives an empirical FAR <= far.

    Ties are never split: every pair scoring exactly t is accepted. The result is inf when even the highest impostor
    score cannot be accepted (nothing is). None when ``far`` is not reachable (see ``max_false_accepts``).
    """
    curve = roc_curve(scores, issame)
    index = _operating_point(curve, far)
    return None if index is None else float(curve.thresholds[index])


def tar_at_far(
    scores: np.ndarray, issame: np.ndarray, fars: Sequence[float] = DEFAULT_FARS
) -> dict[float, float | None]:
    """True accept rate at each target false accept rate.

    The threshold is the lowest at which the empirical FAR is <= the target (``threshold_at_far``). A FAR is
    reachable only if there are at least 1/FAR impostor pairs (1e-6 needs a million); an unreachable FAR maps to
    None, never to a number measured at a higher FAR.

    Args:
        scores: pair similarities (higher = more alike), shape [P].
        issame: ground truth, shape [P].
        fars: target false accept rates, each in (0, 1].

    Returns:
        ``{far: tar or None}`` in the order of ``fars``.
    """
    curve = roc_curve(scores, issame)
    result: dict[float, float | None] = {}
    for far in fars:
        index = _operating_point(curve, far)
        result[far] = None if index is None else float(curve.tar[index])
    return result


def format_tar_header(fars: Sequence[float] = DEFAULT_FARS, first: str = "method") -> str:
    """Markdown header (and rule) for rows from ``format_tar_row``, e.g. ``| method | 1e-06 | ... |``."""
    cells = [first, *(f"{far:.0e}".replace("e-0", "e-") for far in fars)]
    return "| " + " | ".join(cells) + " |\n|" + "---|" * len(cells)


def format_tar_row(name: str, tars: Mapping[float, float | None], digits: int = 2, percent: bool = True) -> str:
    """One markdown table row of TAR values, ``NOT_REACHABLE`` ("n/r") for None, in percent by default.

    Example: ``format_tar_row("QW", {1e-4: 0.94512, 1e-6: None})`` gives ``| QW | 94.51 | n/r |``.
    """
    scale = 100.0 if percent else 1.0
    cells = [NOT_REACHABLE if tar is None else f"{tar * scale:.{digits}f}" for tar in tars.values()]
    return "| " + " | ".join([name, *cells]) + " |"
