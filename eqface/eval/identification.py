"""1:N identification: closed-set rank-k accuracy and open-set DIR at a fixed FPIR, from a probe × gallery score matrix.

The gallery may hold several entries (images or templates) per identity; an identity scores the best of its entries, and
ranks count identities. Ties are resolved against the probe: an identity that ties the mate's score ranks ahead of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from eqface.eval.roc import max_false_accepts

DEFAULT_FPIRS = (1e-3, 1e-2, 1e-1)


def _check_matrix(
    scores: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    probe_labels = np.asarray(probe_labels)
    gallery_labels = np.asarray(gallery_labels)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty [probes, gallery] matrix, got shape {scores.shape}")
    if probe_labels.shape != (scores.shape[0],) or gallery_labels.shape != (scores.shape[1],):
        raise ValueError(
            f"labels must match the score matrix {scores.shape}: got probe_labels {probe_labels.shape}, "
            f"gallery_labels {gallery_labels.shape}"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf")
    return scores, probe_labels, gallery_labels


def identity_scores(scores: np.ndarray, gallery_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapses gallery entries to identities: each identity scores the maximum over its entries.

    Returns:
        ``(identities, matrix)``: the sorted distinct gallery identities [I] and the probe × identity scores [P, I].
    """
    identities, codes = np.unique(gallery_labels, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(identities)))
    return identities, np.maximum.reduceat(scores[:, order], starts, axis=1)


def _mate_ranks(
    scores: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every probe: whether it is mated, the rank of its mate and the mate's score (rank 0, score nan if not)."""
    identities, matrix = identity_scores(scores, gallery_labels)
    column = np.searchsorted(identities, probe_labels)
    column = np.minimum(column, len(identities) - 1)
    mated = identities[column] == probe_labels
    mate_score = np.where(mated, matrix[np.arange(len(probe_labels)), column], np.nan)
    ranks = np.where(mated, np.sum(matrix >= mate_score[:, None], axis=1), 0)
    return mated, ranks, mate_score


def rank_k_accuracy(
    scores: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Closed-set identification rate at each rank k: the fraction of probes whose mate is among the top k identities.

    Args:
        scores: probe × gallery similarities, shape [P, G].
        probe_labels: identity of each probe, shape [P]; every one must be enrolled in the gallery.
        gallery_labels: identity of each gallery entry, shape [G].
        ks: ranks to report (each >= 1).

    Raises:
        ValueError: on shape mismatch, non-finite scores, a rank < 1, or a probe whose identity is not enrolled.
    """
    scores, probe_labels, gallery_labels = _check_matrix(scores, probe_labels, gallery_labels)
    if any(k < 1 for k in ks):
        raise ValueError(f"ranks must be >= 1, got {list(ks)}")
    mated, ranks, _ = _mate_ranks(scores, probe_labels, gallery_labels)
    if not mated.all():
        missing = np.unique(probe_labels[~mated])[:5].tolist()
        raise ValueError(f"closed-set identification needs every probe enrolled; not in the gallery: {missing}")
    return {k: float(np.mean(ranks <= k)) for k in ks}


def dir_at_fpir(
    scores: np.ndarray,
    probe_labels: np.ndarray,
    gallery_labels: np.ndarray,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
) -> dict[float, float | None]:
    """Open-set detection and identification rate (DIR) at each false positive identification rate (FPIR).

    Non-mated probes (identity not in the gallery) set the threshold: a non-mated probe is a false positive when its
    best gallery score is >= the threshold, and the threshold is the lowest for which the fraction of false positives
    is <= the target FPIR. DIR is the fraction of mated probes whose mate is at rank 1 and scores >= that threshold.
    An FPIR is reachable only with at least 1/FPIR non-mated probes; otherwise its DIR is None.

    Raises:
        ValueError: on invalid input, or when there are no mated or no non-mated probes.
    """
    scores, probe_labels, gallery_labels = _check_matrix(scores, probe_labels, gallery_labels)
    mated, ranks, mate_score = _mate_ranks(scores, probe_labels, gallery_labels)
    if mated.all() or not mated.any():
        raise ValueError(
            f"open-set identification needs mated and non-mated probes, got {int(mated.sum())} mated of {len(mated)}"
        )
    nonmated_top = np.sort(scores[~mated].max(axis=1))[::-1]
    hits = ranks[mated] == 1
    result: dict[float, float | None] = {}
    for fpir in fpirs:
        allowed = max_false_accepts(fpir, len(nonmated_top))
        if allowed is None:
            result[fpir] = None
            continue
        # "score > the (allowed+1)-th best non-mated score" admits at most `allowed` non-mated probes, ties excluded.
        cut = nonmated_top[allowed] if allowed < len(nonmated_top) else -np.inf
        result[fpir] = float(np.mean(hits & (mate_score[mated] > cut)))
    return result
