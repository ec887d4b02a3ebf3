"""Face detectors by name: ``create_detector("mtcnn", weights=...)``.

Each factory imports its implementation when called, so importing this module loads neither torch nor onnxruntime,
and the implementations (which import ``eqface.camera.detection``) never import this module back. The default,
``mtcnn``, runs on the MTCNN weights that the facenet-pytorch wheel ships (installed by
``python -m eqface.camera.weights``); ``retinaface`` is the detector that aligned the CelebA pack, on weights of
unknown terms (internal tests only). Nothing is downloaded at run time.
"""

from __future__ import annotations

from eqface.camera.detection import Detector
from eqface.registry import Registry

DETECTORS: Registry[Detector] = Registry("detector")
DEFAULT_DETECTOR = "mtcnn"


@DETECTORS.register("mtcnn")
def mtcnn(**options: object) -> Detector:
    """MTCNN on the weights from the facenet-pytorch wheel (MIT): ``weights`` is their folder."""
    from eqface.camera.mtcnn import MTCNN

    return MTCNN(**options)


@DETECTORS.register("retinaface")
def retinaface(**options: object) -> Detector:
    """RetinaFace-MobileNet0.25 on onnxruntime: ``weights`` is its ONNX file."""
    from eqface.camera.retinaface import RetinaFace

    return RetinaFace(**options)


def create_detector(name: str = DEFAULT_DETECTOR, **options: object) -> Detector:
    """The detector registered as ``name``, built with ``options`` (``weights``, ``min_size``, …).

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    return DETECTORS.create(name, **options)
