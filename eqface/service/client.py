"""Small helpers for clients of the service: building frames and reading templates in the wire format."""

from __future__ import annotations

import numpy as np

from eqface.service.v1 import aggregator_pb2 as pb


def embedding_bytes(embedding: np.ndarray) -> bytes:
    """The wire format of an embedding: raw little-endian float32."""
    return np.ascontiguousarray(embedding, dtype="<f4").tobytes()


def feature_frame(subject_id: str, sequence: int, embedding: np.ndarray, quality: float) -> pb.Frame:
    features = pb.Features(embedding=embedding_bytes(embedding), quality=quality)
    return pb.Frame(subject_id=subject_id, sequence=sequence, features=features)


def image_frame(subject_id: str, sequence: int, image: bytes) -> pb.Frame:
    return pb.Frame(subject_id=subject_id, sequence=sequence, image=image)


def template_of(state: pb.SubjectState) -> np.ndarray | None:
    """A SubjectState's template as float32 [D], or None when the subject has none."""
    if not state.template:
        return None
    return np.frombuffer(state.template, dtype="<f4").astype(np.float32)
