"""Margin-based classification losses: the Eq. 6 quality-scaled combined-margin softmax and its classifier."""

from eqface.losses.margin import CombinedMarginLoss, NormalizedClassifier

__all__ = ["CombinedMarginLoss", "NormalizedClassifier"]
