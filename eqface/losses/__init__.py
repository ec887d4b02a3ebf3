"""Margin-based classification losses: the Eq. 6 quality-scaled combined-margin softmax and its classifier
(one full matrix, or Partial FC: sharded across ranks with sampled negatives)."""

from eqface.losses.margin import CombinedMarginLoss, NormalizedClassifier
from eqface.losses.partial_fc import PartialFC

__all__ = ["CombinedMarginLoss", "NormalizedClassifier", "PartialFC"]
