"""EQFace: face recognition with an explicit face-quality score, from training to serving."""

__version__ = "0.1.0"
