"""Backbones (registered by name), the quality branch and the EQFace network."""

from eqface.models import iresnet, mobilefacenet, tiny  # noqa: F401  (registers the backbones)
from eqface.models.backbone import BACKBONES, Backbone
from eqface.models.eqface_net import EQFaceNet, build_model
from eqface.models.quality import QualityHead

__all__ = ["BACKBONES", "Backbone", "EQFaceNet", "QualityHead", "build_model"]
