"""Comparison pairs for verification protocols: sampled genuine/impostor pairs, full cross-set pairs, cosine scores."""

from __future__ import annotations

import numpy as np

from eqface.aggregation import l2_normalize


def _as_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {labels.shape}")
    return labels


def _decode(counts: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps flat keys in [0, counts.sum()) to (row, offset): row p owns the next counts[p] keys."""
    ends = np.cumsum(counts)
    rows = np.searchsorted(ends, keys, side="right")
    return rows, keys - (ends[rows] - counts[rows])


def _sample_keys(total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(rng.choice(total, size=n, replace=False), dtype=np.int64)


def _identity_blocks(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sorts images by label; for each sorted position p, counts the pairs (p, q > p) of each kind.

    Returns:
        ``(order, ends, genuine_counts, impostor_counts)``: the stable sort order, the exclusive end of each position's
        identity block, and the number of same-identity / different-identity partners q > p.
    """
    order = np.argsort(labels, kind="stable")
    _, codes = np.unique(labels[order], return_inverse=True)
    ends = np.searchsorted(codes, codes, side="right")
    return order, ends, ends - np.arange(len(labels)) - 1, len(labels) - ends


def make_pairs(
    labels: np.ndarray, n_genuine: int, n_impostor: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples distinct genuine and impostor pairs of images, uniformly and without duplicates.

    Images are sorted by label (stably), so every unordered pair {i, j} of a kind has one flat key; keys are drawn
    without replacement and decoded, so the pair list is never materialised. The genuine and impostor pairs are then
    shuffled together, so contiguous folds (``kfold_accuracy``) get a mix of both.

    Args:
        labels: identity of each image, shape [N].
        n_genuine: number of same-identity pairs to draw.
        n_impostor: number of different-identity pairs to draw.
        rng: the only source of randomness; the same generator state gives the same pairs.

    Returns:
        ``(idx_a, idx_b, issame)``: int64 image indices with ``idx_a < idx_b`` and a bool array, each of length
        ``n_genuine + n_impostor``.

    Raises:
        ValueError: when a count is negative or larger than the number of distinct pairs the labels allow (for
            example no identity has two images, so no genuine pair exists).
    """
    labels = _as_labels(labels)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if n_genuine < 0 or n_impostor < 0:
        raise ValueError(f"pair counts must be >= 0, got n_genuine={n_genuine}, n_impostor={n_impostor}")
    order, ends, genuine_counts, impostor_counts = _identity_blocks(labels)
    for kind, wanted, counts in (("genuine", n_genuine, genuine_counts), ("impostor", n_impostor, impostor_counts)):
        available = int(counts.sum())
        if wanted > available:
            why = " (no identity has two images)" if kind == "genuine" and available == 0 else ""
            raise ValueError(f"asked for {wanted} {kind} pairs but the labels only give {available}{why}")
    g_rows, g_off = _decode(genuine_counts, _sample_keys(int(genuine_counts.sum()), n_genuine, rng))
    i_rows, i_off = _decode(impostor_counts, _sample_keys(int(impostor_counts.sum()), n_impostor, rng))
    first = np.concatenate([g_rows, i_rows])
    second = np.concatenate([g_rows + 1 + g_off, ends[i_rows] + i_off])
    a, b = order[first], order[second]
    issame = np.concatenate([np.ones(n_genuine, dtype=bool), np.zeros(n_impostor, dtype=bool)])
    shuffle = rng.permutation(len(issame))
    return (
        np.minimum(a, b)[shuffle].astype(np.int64),
        np.maximum(a, b)[shuffle].astype(np.int64),
        issame[shuffle],
    )


def all_pairs(labels_a: np.ndarray, labels_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (a, b) pair between two sets, in row-major order (the order of ``similarity_matrix.ravel()``).

    For the reference/query protocol (paper Sec. 5.3): with ``sim = emb_a @ emb_b.T``, ``sim.ravel()`` or
    ``sim[idx_a, idx_b]`` are the scores of the returned pairs. Self-pairs are not removed: use two disjoint sets.

    Args:
        labels_a: identities of the first set, shape [A].
        labels_b: identities of the second set, shape [B].

    Returns:
        ``(idx_a, idx_b, issame)``, each of length A·B.
    """
    labels_a = _as_labels(labels_a, "labels_a")
    labels_b = _as_labels(labels_b, "labels_b")
    idx_a, idx_b = np.divmod(np.arange(len(labels_a) * len(labels_b), dtype=np.int64), len(labels_b) or 1)
    return idx_a, idx_b, labels_a[idx_a] == labels_b[idx_b]


def every_pair(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every unordered pair {i, j}, i < j, of one set: ``(idx_a, idx_b, issame)``, each of length N·(N−1)/2."""
    labels = _as_labels(labels)
    idx_a, idx_b = np.triu_indices(len(labels), k=1)
    return idx_a.astype(np.int64), idx_b.astype(np.int64), labels[idx_a] == labels[idx_b]


def cosine_scores(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] embedding arrays (rows are L2-normalised first; a zero row scores 0).

    Raises:
        ValueError: on shape mismatch or non-finite values.
    """
    emb_a = np.asarray(emb_a, dtype=np.float64)
    emb_b = np.asarray(emb_b, dtype=np.float64)
    if emb_a.ndim != 2 or emb_a.shape != emb_b.shape:
        raise ValueError(f"embeddings must both have shape [N, D], got {emb_a.shape} and {emb_b.shape}")
    if not (np.all(np.isfinite(emb_a)) and np.all(np.isfinite(emb_b))):
        raise ValueError("embeddings contain NaN or inf")
    return np.einsum("nd,nd->n", l2_normalize(emb_a), l2_normalize(emb_b))


def check_scores(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validates pair scores (higher = more alike) and their ground truth; returns them as float64 and bool arrays.

    Raises:
        ValueError: unless both are 1-D of equal non-zero length, scores are finite and issame holds only
            booleans or 0/1.
    """
    scores = np.asarray(scores, dtype=np.float64)
    raw = np.asarray(issame)
    if scores.ndim != 1 or raw.shape != scores.shape or scores.size == 0:
        raise ValueError(f"scores and issame must be 1-D of equal non-zero length, got {scores.shape} and {raw.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf")
    if raw.dtype != bool and not np.all((raw == 0) | (raw == 1)):
        raise ValueError("issame must hold booleans (or 0/1)")
    return scores, raw.astype(bool)
