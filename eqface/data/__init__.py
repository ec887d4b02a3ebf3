"""Face data: readers (npz packs, image folders, RecordIO, synthetic), augmentations and training batches."""

from eqface.data.factory import build_source
from eqface.data.sources import ArraySource, EncodedSource, FaceSource, split_identities

__all__ = ["ArraySource", "EncodedSource", "FaceSource", "build_source", "split_identities"]
