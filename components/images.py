"""The container image the components run in: the ``train`` stage of the project's Dockerfile.

Build and push it under this name (components/README.md), or compile with ``eqface pipeline compile --image REF``
to use another registry; the tag follows the package version.
"""

REGISTRY = "ghcr.io/eqface-mlops"
VERSION = "0.1.0"
TRAINING_IMAGE = f"{REGISTRY}/eqface-train:{VERSION}"  # CUDA torch + eqface[export,pipeline]: every component
SERVICE_IMAGE = f"{REGISTRY}/eqface-service:{VERSION}"  # slim: python -m eqface.service (not used by the pipeline)
TRITON_IMAGE = f"{REGISTRY}/eqface-triton:{VERSION}"  # Triton + eqface preprocessing (manifests/, not the pipeline)
