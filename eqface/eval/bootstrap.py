"""Bootstrap confidence intervals over identities for EDC pAUC (FIQA practice: resample people, not comparisons).

Comparisons of one person are not independent (one poor photo takes part in many of them), so the resampling unit is
the identity. A replicate draws ``n`` identities with replacement from the ``n`` present; a comparison then counts as
often as its identities were drawn — a genuine comparison of identity ``i`` ``c_i`` times, an impostor comparison of
``i`` and ``j`` ``c_i · c_j`` times — and the whole curve, start-FMR threshold included, is recomputed. Every measure
is evaluated on the same replicates, so differences between measures can be read pairwise as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from eqface.eval.edc import DEFAULT_START_FMR, SortedComparisons, edc_pauc

DEFAULT_LIMITS = (0.2, 0.3)
DEFAULT_REPLICATES = 1000


@dataclass(frozen=True)
class ThresholdSet:
    """Comparisons that fix the score threshold instead of the evaluated ones (e.g. the clean images of the same
    identities, where a deployment sets its operating threshold); resampled with the same identity draws."""

    scores: np.ndarray
    issame: np.ndarray
    identity_a: np.ndarray
    identity_b: np.ndarray


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval (``level`` = 0.95 gives the 2.5/97.5 percentiles)."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


def identity_replicates(
    identities: np.ndarray, replicates: int = DEFAULT_REPLICATES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Identity draws: ``(codes, counts)`` with codes [M] in 0..n-1 for labels [M] and counts [replicates, n].

    Raises:
        ValueError: for fewer than two identities or a non-positive number of replicates.
    """
    labels, codes = np.unique(np.asarray(identities), return_inverse=True)
    if len(labels) < 2 or replicates < 1:
        raise ValueError(f"need >= 2 identities and >= 1 replicate, got {len(labels)} and {replicates}")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(labels), np.full(len(labels), 1 / len(labels)), size=replicates)
    return codes, counts.astype(np.float64)


def comparison_weights(code_a: np.ndarray, code_b: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Multiplicity of each comparison in one replicate: c_i for genuine (i, i), c_i · c_j for impostor (i, j)."""
    same = code_a == code_b
    return np.where(same, counts[code_a], counts[code_a] * counts[code_b])


def pauc_intervals(
    scores: np.ndarray,
    issame: np.ndarray,
    pair_qualities: Mapping[str, np.ndarray],
    identity_a: np.ndarray,
    identity_b: np.ndarray,
    *,
    limits: Sequence[float] = DEFAULT_LIMITS,
    replicates: int = DEFAULT_REPLICATES,
    start_fmr: float = DEFAULT_START_FMR,
    seed: int = 0,
    level: float = 0.95,
    threshold_set: ThresholdSet | None = None,
    differences: Sequence[tuple[str, str]] = (),
) -> dict[str, dict[float, Interval]]:
    """EDC pAUC at each discard limit with its bootstrap interval, for several quality measures at once.

    Args:
        scores, issame: the comparisons (see ``eqface.eval.edc.edc_curve``).
        pair_qualities: measure name → quality of each comparison (``pair_quality``), shape [M] each.
        identity_a, identity_b: identity label of each comparison's two images, shape [M] each; for a genuine
            comparison they are equal.
        limits: discard fractions for the pAUC (raw area, as ``edc_pauc``).
        replicates: bootstrap replicates; replicates whose resample cannot reach ``start_fmr`` are skipped.
        threshold_set: when given, the threshold at ``start_fmr`` comes from these comparisons (same identities).
        differences: pairs ``(a, b)`` of measure names whose paired difference pAUC_a − pAUC_b is wanted too, from
            the same replicates (much tighter than comparing two marginal intervals); keyed ``"a-b"``.

    Returns:
        ``{measure or "a-b": {limit: Interval}}``; the estimate is the pAUC (difference) on the comparisons as given.

    Raises:
        ValueError: when identities contradict ``issame`` or too few replicates are usable.
    """
    scores = np.asarray(scores, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    identity_a, identity_b = np.asarray(identity_a), np.asarray(identity_b)
    if identity_a.shape != scores.shape or identity_b.shape != scores.shape:
        raise ValueError(f"identities must have shape {scores.shape}, got {identity_a.shape} and {identity_b.shape}")
    if np.any((identity_a == identity_b) != issame):
        raise ValueError("issame disagrees with the identities of some comparisons")
    reference = threshold_set or ThresholdSet(scores, issame, identity_a, identity_b)
    labels = np.concatenate([identity_a, identity_b, reference.identity_a, reference.identity_b])
    codes, counts = identity_replicates(labels, replicates, seed)
    m, r = len(scores), len(reference.scores)
    code_a, code_b = codes[:m], codes[m : 2 * m]
    ref_a, ref_b = codes[2 * m : 2 * m + r], codes[2 * m + r :]
    thresholds = SortedComparisons(reference.scores, reference.issame, np.zeros(r))
    sorted_by_measure = {name: SortedComparisons(scores, issame, q) for name, q in pair_qualities.items()}
    samples: dict[str, dict[float, list[float]]] = {name: {limit: [] for limit in limits} for name in pair_qualities}
    for replicate in counts:
        threshold = thresholds.threshold(comparison_weights(ref_a, ref_b, replicate), start_fmr)
        if threshold is None:
            continue
        weights = comparison_weights(code_a, code_b, replicate)
        if not np.any(weights[issame] > 0):
            continue
        for name, comparisons in sorted_by_measure.items():
            curve = comparisons.curve(weights, start_fmr, threshold)
            for limit in limits:
                samples[name][limit].append(edc_pauc(curve, limit))
    used = len(next(iter(next(iter(samples.values())).values()))) if samples else 0
    if samples and used < max(10, replicates // 2):
        raise ValueError(f"only {used} of {replicates} replicates reach start FMR {start_fmr}: too few impostors")
    tail = (1 - level) / 2 * 100
    result: dict[str, dict[float, Interval]] = {}
    point_threshold = thresholds.threshold(np.ones(r), start_fmr)
    if point_threshold is None:
        raise ValueError(f"start FMR {start_fmr} is not reachable with {int((~reference.issame).sum())} impostors")
    for name, comparisons in sorted_by_measure.items():
        point = comparisons.curve(np.ones(len(scores)), start_fmr, point_threshold)
        result[name] = {}
        for limit in limits:
            low, high = np.percentile(samples[name][limit], [tail, 100 - tail])
            result[name][limit] = Interval(edc_pauc(point, limit), float(low), float(high), level)
    for a, b in differences:
        result[f"{a}-{b}"] = {}
        for limit in limits:
            diff = np.subtract(samples[a][limit], samples[b][limit])
            low, high = np.percentile(diff, [tail, 100 - tail])
            estimate = result[a][limit].estimate - result[b][limit].estimate
            result[f"{a}-{b}"][limit] = Interval(estimate, float(low), float(high), level)
    return result
