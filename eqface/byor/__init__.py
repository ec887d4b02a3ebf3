"""Bring your own recogniser: EQFace quality for a pretrained ArcFace-style ONNX model (paper §5.2, frozen backbone).

import (``importer``) → Step 2 on cached features (``features``, ``quality_training``) → one served ONNX (``graft``).
"""
