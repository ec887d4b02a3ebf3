"""Quality-aware template aggregation (paper Eq. 7–9): pure numpy, no I/O.

Inputs are the model's L2-normalised embeddings ``f`` [N, D] and qualities ``s`` [N] in [0, 1]. Invalid input raises
``ValueError`` so callers (the evaluation code, the streaming service) can turn it into their own error type.

Progressive QWFA keeps the *unnormalised* quality-weighted mean and L2-normalises only for the similarity gate and the
output. This is what makes the paper's remark hold: with the gates disabled, Eq. 8 reproduces Eq. 7 at every step.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from eqface import contract

PAPER_F_TH = 0.5
PAPER_S_TH = 0.3
_EPS = 1e-12


@dataclass(frozen=True)
class Thresholds:
    """The aggregation thresholds of one model: progressive QWFA's gates (Eq. 8-9) and QWFAF's quality filter.

    Calibrated per model at export (``eqface.eval.calibration``) and carried with it: ONNX metadata_props, then the
    Triton model-config parameters, under the keys of ``eqface.contract.THRESHOLD_KEYS``.
    """

    f_th: float
    s_th: float
    qwfaf_s_th: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.f_th) and -1.0 <= self.f_th <= 1.0):
            raise ValueError(f"f_th is a cosine similarity threshold in [-1, 1], got {self.f_th}")
        for name in ("s_th", "qwfaf_s_th"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} is a quality threshold in [0, 1], got {value}")

    def as_metadata(self) -> dict[str, str]:
        """``{contract key: decimal string}``, as stored in the ONNX file and the Triton config."""
        return {
            contract.F_TH_KEY: repr(float(self.f_th)),
            contract.S_TH_KEY: repr(float(self.s_th)),
            contract.QWFAF_S_TH_KEY: repr(float(self.qwfaf_s_th)),
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> Thresholds | None:
        """Reads the thresholds back; None when the mapping holds none of the keys (an uncalibrated model).

        Raises:
            ValueError: only some of the keys are present, or a value is not a number in range.
        """
        present = [key for key in contract.THRESHOLD_KEYS if key in metadata]
        if not present:
            return None
        missing = [key for key in contract.THRESHOLD_KEYS if key not in metadata]
        if missing:
            raise ValueError(f"model metadata has {present} but lacks {missing}: calibrate the model again")
        try:
            values = [float(metadata[key]) for key in contract.THRESHOLD_KEYS]
        except ValueError:
            raise ValueError(f"model metadata thresholds are not numbers: {dict(metadata)}") from None
        return cls(*values)


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Scales vectors to unit length; zero vectors stay zero."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, _EPS)


def check_features(features: np.ndarray, qualities: np.ndarray | None = None) -> None:
    """Raises ValueError unless features is a finite [N, D] array (N ≥ 1) and qualities a finite [N] array in [0, 1]."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"features must have shape [N, D] with N, D >= 1, got {features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or inf")
    if qualities is not None:
        check_qualities(qualities, features.shape[0])


def check_qualities(qualities: np.ndarray, n: int) -> None:
    qualities = np.asarray(qualities)
    if qualities.shape != (n,):
        raise ValueError(f"qualities must have shape [{n}], got {qualities.shape}")
    if not np.all(np.isfinite(qualities)):
        raise ValueError("qualities contain NaN or inf")
    if np.any((qualities < 0) | (qualities > 1)):
        raise ValueError("qualities must lie in [0, 1]")


def _check_frame(feature: np.ndarray, quality: float) -> float:
    """``check_features(feature[None, :], [quality])`` for one vector [D] and one quality, returned as a float.

    Same checks and messages without building [1, D] and [1] arrays: this validation was ~40% of an update's cost,
    and the streaming service (eqface.service) runs one update per frame.
    """
    if feature.shape[0] == 0:
        raise ValueError(f"features must have shape [N, D] with N, D >= 1, got {(1, 0)}")
    if not np.isfinite(feature).all():
        raise ValueError("features contain NaN or inf")
    if np.ndim(quality) != 0:
        raise ValueError(f"qualities must have shape [1], got {(1, *np.shape(quality))}")
    s = float(quality)
    if not math.isfinite(s):
        raise ValueError("qualities contain NaN or inf")
    if not 0.0 <= s <= 1.0:
        raise ValueError("qualities must lie in [0, 1]")
    return s


def mean_template(features: np.ndarray) -> np.ndarray:
    """Plain average of the frames, L2-normalised."""
    check_features(features)
    return l2_normalize(np.mean(features, axis=0))


def qwfa(features: np.ndarray, qualities: np.ndarray) -> np.ndarray:
    """Eq. 7: Σ s_j f_j / Σ s_j, L2-normalised. Falls back to the plain average when every quality is 0."""
    check_features(features, qualities)
    s = np.asarray(qualities, dtype=np.float64)
    if s.sum() <= 0:
        return mean_template(features)
    return l2_normalize((s[:, None] * features).sum(axis=0) / s.sum())


def qwfaf(features: np.ndarray, qualities: np.ndarray, s_th: float) -> np.ndarray:
    """QWFA with a filter: if mean(s) ≥ s_th, aggregate only frames with s ≥ s_th (weighted); else the plain average."""
    check_features(features, qualities)
    s = np.asarray(qualities, dtype=np.float64)
    if s.mean() < s_th:
        return mean_template(features)
    keep = s >= s_th
    return qwfa(np.asarray(features)[keep], s[keep])


class Decision(enum.Enum):
    """What one progressive update did with a frame."""

    SEEDED = "seeded"  # first frame of the subject: F_1 = f_1
    ACCEPTED = "accepted"  # both gates passed: merged into the template
    REJECTED_QUALITY = "rejected_quality"  # s_i <= s_th
    REJECTED_SIMILARITY = "rejected_similarity"  # F_{i-1}·f_i <= f_th
    RESEEDED = "reseeded"  # replaced a seed whose quality was below s_th (see ProgressiveQWFA)

    @property
    def merged(self) -> bool:
        return self is not Decision.REJECTED_QUALITY and self is not Decision.REJECTED_SIMILARITY


@dataclass(frozen=True)
class UpdateResult:
    decision: Decision
    similarity: float | None  # normalised F_{i-1}·f_i; None for the first frame


@dataclass
class ProgressiveQWFA:
    """Progressive quality-weighted feature aggregation, Eq. 8–9, as an incremental state.

    ``weighted_mean`` is the unnormalised recursion value F_i and ``s_sum`` the accumulated quality; ``template``
    is its L2-normalised form. ``frames`` counts every update, ``accepted`` the merged ones.

    First frame: as in the paper, F_1 = f_1 and s_sum = s_1 whatever its quality. When that seed's quality is not
    above s_th (a blurred first detection, say), the template is *provisional*: the first later frame that passes the
    quality gate replaces it instead of being compared with it (``Decision.RESEEDED``), so one bad first frame cannot
    lock a subject out. Set ``reseed_low_quality=False`` for the paper's strict behaviour.
    """

    f_th: float = PAPER_F_TH
    s_th: float = PAPER_S_TH
    reseed_low_quality: bool = True
    weighted_mean: np.ndarray | None = None
    s_sum: float = 0.0
    frames: int = 0
    accepted: int = 0
    provisional: bool = field(default=False)

    @property
    def template(self) -> np.ndarray | None:
        if self.weighted_mean is None:
            return None
        return l2_normalize(self.weighted_mean).astype(np.float32)

    def similarity(self, feature: np.ndarray) -> float | None:
        """Cosine similarity of a frame to the current template (None before the first frame)."""
        if self.weighted_mean is None:
            return None
        return float(l2_normalize(self.weighted_mean) @ l2_normalize(feature))

    def update(self, feature: np.ndarray, quality: float) -> UpdateResult:
        """Applies Eq. 8–9 for one frame; raises ValueError (state unchanged) on invalid input."""
        f = np.asarray(feature, dtype=np.float64)
        if f.ndim != 1:
            raise ValueError(f"feature must be one vector [D], got shape {f.shape}")
        s = _check_frame(f, quality)
        if self.weighted_mean is not None and f.shape != self.weighted_mean.shape:
            raise ValueError(f"feature has {f.shape[0]} dims, the template has {self.weighted_mean.shape[0]}")
        similarity = self.similarity(f)
        self.frames += 1
        if self.weighted_mean is None or (self.provisional and s > self.s_th):
            decision = Decision.SEEDED if self.weighted_mean is None else Decision.RESEEDED
            self._seed(f, s)
            return UpdateResult(decision, similarity)
        if s <= self.s_th:
            return UpdateResult(Decision.REJECTED_QUALITY, similarity)
        if similarity is None or similarity <= self.f_th:
            return UpdateResult(Decision.REJECTED_SIMILARITY, similarity)
        if self.s_sum + s > 0:
            merged = (self.s_sum * self.weighted_mean + s * f) / (self.s_sum + s)
        else:  # only with s_th < 0: every merged weight is 0, so Eq. 7 falls back to the plain mean, as qwfa() does
            merged = (self.accepted * self.weighted_mean + f) / (self.accepted + 1)
        self.weighted_mean = merged.astype(np.float32)
        self.s_sum += s
        self.accepted += 1
        return UpdateResult(Decision.ACCEPTED, similarity)

    def _seed(self, f: np.ndarray, s: float) -> None:
        self.weighted_mean = f.astype(np.float32)
        self.s_sum = s
        self.accepted += 1
        self.provisional = self.reseed_low_quality and s <= self.s_th


def progressive_templates(
    features: np.ndarray,
    qualities: np.ndarray,
    f_th: float = PAPER_F_TH,
    s_th: float = PAPER_S_TH,
    reseed_low_quality: bool = True,
) -> np.ndarray:
    """Batch form of progressive QWFA: the normalised template after each frame, shape [N, D]."""
    check_features(features, qualities)
    state = ProgressiveQWFA(f_th=f_th, s_th=s_th, reseed_low_quality=reseed_low_quality)
    out = np.empty(np.shape(features), dtype=np.float32)
    for i, (f, s) in enumerate(zip(features, qualities)):
        state.update(f, float(s))
        out[i] = state.template
    return out
