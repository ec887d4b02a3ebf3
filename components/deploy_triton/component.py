"""Deploy: write a new version into a Triton model repository (local path, PVC mount, s3:// or gs://) and, given a
Triton URL, load it through the model-control API."""

from typing import NamedTuple

from kfp import dsl

from components.images import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def deploy_triton(
    onnx_model: dsl.Input[dsl.Model],
    repository: str,
    variant: str = "production",
    version: int = 0,
    triton_url: str = "",
    timeout_s: float = 300.0,
) -> NamedTuple("Deployment", [("version", int), ("repository", str), ("loaded", bool)]):
    """Writes version ``version`` (0: the next free one) of the three models, then loads it if ``triton_url`` is set.

    Args:
        repository: the model repository Triton serves (/mnt/models/eqface, s3://bucket/models, gs://...).
        variant: production (onnxruntime on GPU) or local (python backend on CPU, the bundled test server).
        triton_url: grpc://host:8001, http://host:8000 or host:8001; the server must run with
            --model-control-mode=explicit. Empty: only write.
    """
    import os
    from collections import namedtuple

    from eqface.workflow.deploy import deploy
    from eqface.workflow.export import ONNX_FILE

    result = deploy(
        os.path.join(onnx_model.path, ONNX_FILE),
        repository,
        variant=variant,
        version=version,
        triton_url=triton_url,
        timeout_s=timeout_s,
    )
    outputs = namedtuple("Deployment", ["version", "repository", "loaded"])
    return outputs(result.version, result.repository, result.loaded)
