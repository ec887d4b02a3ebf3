"""The per-frame domain logic: apply a validated frame to a subject record with progressive QWFA (Eq. 8-9).

The math is ``eqface.aggregation.ProgressiveQWFA``; this module adds what a stream needs around it: per-subject
sequence numbers (a frame is applied at most once) and an outcome per frame for the reply and the metrics.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import numpy as np

from eqface.aggregation import Decision, ProgressiveQWFA
from eqface.service.state import SubjectRecord


class FrameStatus(enum.Enum):
    SEEDED = "seeded"
    ACCEPTED = "accepted"
    RESEEDED = "reseeded"
    REJECTED_QUALITY = "rejected_quality"
    REJECTED_SIMILARITY = "rejected_similarity"
    DUPLICATE = "duplicate"
    INVALID = "invalid"

    @property
    def merged(self) -> bool:
        return self in (FrameStatus.SEEDED, FrameStatus.ACCEPTED, FrameStatus.RESEEDED)


_FROM_DECISION = {
    Decision.SEEDED: FrameStatus.SEEDED,
    Decision.ACCEPTED: FrameStatus.ACCEPTED,
    Decision.RESEEDED: FrameStatus.RESEEDED,
    Decision.REJECTED_QUALITY: FrameStatus.REJECTED_QUALITY,
    Decision.REJECTED_SIMILARITY: FrameStatus.REJECTED_SIMILARITY,
}


class FrameInput(NamedTuple):
    """A validated frame: the embedding is finite, L2-normalised float32 [D]; quality lies in [0, 1].

    FrameInput and FrameOutcome are NamedTuples (immutable, built per frame, cheaper than frozen dataclasses).
    """

    subject_id: str
    sequence: int
    embedding: np.ndarray
    quality: float


class FrameOutcome(NamedTuple):
    """What happened to one frame, and the subject's counters after it."""

    subject_id: str
    sequence: int
    status: FrameStatus
    quality: float
    similarity: float | None
    s_sum: float
    frames: int
    accepted: int
    last_sequence: int
    detail: str = ""
    error: Exception | None = None  # for INVALID: the validation error (its type selects the status code)


def apply_frame(record: SubjectRecord, frame: FrameInput) -> FrameOutcome:
    """Applies one frame to ``record`` in place (unless it is a duplicate) and says what happened."""
    agg = record.aggregate
    if frame.sequence <= record.last_sequence:
        detail = f"sequence {frame.sequence} <= last applied sequence {record.last_sequence}: not applied again"
        return _outcome(record, frame, FrameStatus.DUPLICATE, None, detail)
    try:
        result = agg.update(frame.embedding, frame.quality)
    except ValueError as exc:  # e.g. a stored template of another dimension than the server's embeddings
        return _outcome(record, frame, FrameStatus.INVALID, None, str(exc))
    record.last_sequence = frame.sequence
    status = _FROM_DECISION[result.decision]
    return _outcome(record, frame, status, result.similarity, _detail(status, frame, result.similarity, agg))


def _outcome(
    record: SubjectRecord, frame: FrameInput, status: FrameStatus, similarity: float | None, detail: str
) -> FrameOutcome:
    agg = record.aggregate
    return FrameOutcome(
        frame.subject_id,
        frame.sequence,
        status,
        frame.quality,
        similarity,
        agg.s_sum,
        agg.frames,
        agg.accepted,
        record.last_sequence,
        detail,
    )


def _detail(status: FrameStatus, frame: FrameInput, similarity: float | None, agg: ProgressiveQWFA) -> str:
    if status is FrameStatus.REJECTED_QUALITY:
        return f"quality {frame.quality:.3f} <= s_th {agg.s_th}"
    if status is FrameStatus.REJECTED_SIMILARITY:
        return f"similarity {similarity:.3f} <= f_th {agg.f_th} to the template"
    if status is FrameStatus.SEEDED and agg.provisional:
        return f"provisional seed: quality {frame.quality:.3f} <= s_th; the next frame above s_th replaces it"
    return ""
