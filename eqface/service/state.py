"""A subject's stored state (progressive QWFA aggregate + last applied sequence) and its compact binary codec.

One record is a 40-byte header plus the float32 weighted mean: 2088 bytes for a 512-d template, under the 3 KiB
budget. The codec round-trips ``ProgressiveQWFA`` exactly (the aggregate keeps its mean in float32).
"""

from __future__ import annotations

import copy
import struct
from dataclasses import dataclass

import numpy as np

from eqface.aggregation import ProgressiveQWFA

_MAGIC = b"EQS1"
# magic, dimension (0 = no template), flags, frames, accepted, last_sequence, s_sum
_HEADER = struct.Struct("<4sHHQQQd")
_FLAG_PROVISIONAL = 1
MAX_DIMENSION = 0xFFFF


@dataclass(frozen=True)
class AggregationParams:
    """The gates every decoded aggregate gets (stored records carry no thresholds: the server's config wins)."""

    f_th: float
    s_th: float
    reseed_low_quality: bool = True

    def new_aggregate(self) -> ProgressiveQWFA:
        return ProgressiveQWFA(f_th=self.f_th, s_th=self.s_th, reseed_low_quality=self.reseed_low_quality)

    def gate(self, aggregate: ProgressiveQWFA) -> None:
        """Gives an existing aggregate these gates (thresholds can change while the service runs: a new model)."""
        aggregate.f_th, aggregate.s_th, aggregate.reseed_low_quality = self.f_th, self.s_th, self.reseed_low_quality


@dataclass(slots=True)
class SubjectRecord:
    """One subject: its aggregate, the last sequence applied to it, and the store's version token (0 = not stored)."""

    subject_id: str
    aggregate: ProgressiveQWFA
    last_sequence: int = 0
    version: int = 0

    def clone(self) -> SubjectRecord:
        # The aggregate replaces (never mutates) its mean array, so a shallow copy of it is an independent state.
        return SubjectRecord(self.subject_id, copy.copy(self.aggregate), self.last_sequence, self.version)

    @property
    def dimension(self) -> int:
        mean = self.aggregate.weighted_mean
        return 0 if mean is None else int(mean.shape[0])


def encode_record(record: SubjectRecord) -> bytes:
    """Serialises the aggregate and the last sequence (not the version, which the store keeps beside the bytes)."""
    agg = record.aggregate
    mean = agg.weighted_mean
    dim = 0 if mean is None else mean.shape[0]
    if dim > MAX_DIMENSION:
        raise ValueError(f"template dimension {dim} exceeds {MAX_DIMENSION}")
    flags = _FLAG_PROVISIONAL if agg.provisional else 0
    header = _HEADER.pack(_MAGIC, dim, flags, agg.frames, agg.accepted, record.last_sequence, agg.s_sum)
    if mean is None:
        return header
    return header + np.ascontiguousarray(mean, dtype="<f4").tobytes()


def decode_record(subject_id: str, data: bytes, version: int, params: AggregationParams) -> SubjectRecord:
    """Inverse of ``encode_record``; raises ValueError on bytes that are not a record of this format."""
    if len(data) < _HEADER.size:
        raise ValueError(f"subject {subject_id!r}: record of {len(data)} bytes is shorter than its header")
    magic, dim, flags, frames, accepted, last_sequence, s_sum = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError(f"subject {subject_id!r}: unknown record format {magic!r}")
    if len(data) != _HEADER.size + 4 * dim:
        raise ValueError(f"subject {subject_id!r}: record has {len(data)} bytes, expected {_HEADER.size + 4 * dim}")
    aggregate = params.new_aggregate()
    if dim:
        aggregate.weighted_mean = np.frombuffer(data, dtype="<f4", offset=_HEADER.size).astype(np.float32)
    aggregate.s_sum = s_sum
    aggregate.frames = frames
    aggregate.accepted = accepted
    aggregate.provisional = bool(flags & _FLAG_PROVISIONAL)
    return SubjectRecord(subject_id, aggregate, last_sequence, version)


def reset_record(record: SubjectRecord, params: AggregationParams) -> SubjectRecord:
    """A fresh aggregate and sequence 0: the client starts its sequence again (also the way out of a counter that
    jumped too far; see ``inputs.MAX_SEQUENCE``)."""
    return SubjectRecord(record.subject_id, params.new_aggregate(), 0, record.version)
