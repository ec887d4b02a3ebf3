"""Evaluation metrics (verification, ROC, identification, EDC) and benchmark-pack readers: pure numpy, no training."""
