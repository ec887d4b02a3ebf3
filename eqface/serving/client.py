"""Small helpers for calling the served models with ``tritonclient.grpc``: inputs and outputs named by the contract.

    client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
    embedding, quality = infer_images(client, [jpeg_bytes])        # ensemble "eqface"
    embedding, quality = infer_tensor(client, x)                     # "eqface_onnx", x float32 [N, 3, H, W]

``image_input``/``tensor_input`` also work with ``tritonclient.grpc.aio`` clients, which take the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from eqface import contract

OUTPUTS = (contract.EMBEDDING_NAME, contract.QUALITY_NAME)


def tensor_input(x: np.ndarray) -> grpcclient.InferInput:
    """``contract.INPUT_NAME`` from a float32 [N, 3, H, W] batch (sent as it is: the server checks dtype and shape)."""
    tensor = grpcclient.InferInput(contract.INPUT_NAME, list(x.shape), np_to_triton_dtype(x.dtype))
    tensor.set_data_from_numpy(np.ascontiguousarray(x))
    return tensor


def image_input(images: Sequence[bytes]) -> grpcclient.InferInput:
    """``contract.IMAGE_BYTES_NAME`` [N, 1] from encoded JPEG/PNG files, one per batch item."""
    data = np.empty((len(images), *contract.IMAGE_BYTES_SHAPE), dtype=np.object_)
    data[:, 0] = [bytes(b) for b in images]
    tensor = grpcclient.InferInput(contract.IMAGE_BYTES_NAME, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def outputs(result) -> tuple[np.ndarray, np.ndarray]:
    """(embedding [N, D], quality [N, 1]) from an ``InferResult``."""
    return result.as_numpy(contract.EMBEDDING_NAME), result.as_numpy(contract.QUALITY_NAME)


def infer_tensor(
    client: grpcclient.InferenceServerClient, x: np.ndarray, model: str = contract.ONNX_MODEL_NAME, **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """Runs the tensor-in model; ``kwargs`` go to ``client.infer`` (e.g. ``client_timeout``)."""
    requested = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS]
    return outputs(client.infer(model, [tensor_input(x)], outputs=requested, **kwargs))


def infer_images(
    client: grpcclient.InferenceServerClient,
    images: Sequence[bytes],
    model: str = contract.ENSEMBLE_MODEL_NAME,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Runs the bytes-in ensemble on encoded images; raises ``InferenceServerException`` for undecodable ones."""
    requested = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS]
    return outputs(client.infer(model, [image_input(images)], outputs=requested, **kwargs))
