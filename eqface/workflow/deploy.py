"""The deploy step: write a new model version into a Triton model repository and, given a server, load it there.

The repository may be a local folder (a PVC mount included) or an object-store prefix (``s3://``, ``gs://``, which
Triton reads natively); a remote version is assembled locally and uploaded, version folders first and configs last.
Loading goes through Triton's model-control API, so the server must run with ``--model-control-mode=explicit``; the
composing models are loaded before the ensemble, then the new version must report READY and answer a request. A
server that restricts model control (``eqface.serving.control``) gets the key from ``EQFACE_TRITON_CONTROL_KEY_FILE``
(the deploy job's mounted Secret) or ``EQFACE_TRITON_CONTROL_KEY``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from eqface import contract
from eqface.contract import InferenceSpec
from eqface.workflow import storage

MODELS = (contract.ONNX_MODEL_NAME, contract.PREPROCESS_MODEL_NAME, contract.ENSEMBLE_MODEL_NAME)  # load order
CONFIG_FILE = "config.pbtxt"


@dataclass(frozen=True)
class Deployment:
    repository: str
    version: int
    variant: str
    triton_url: str  # "" when the server was not told
    loaded: bool


def existing_versions(repository: str) -> list[int]:
    """Version numbers present in the repository (any of its models), ascending."""
    versions: set[int] = set()
    for model in MODELS:
        names = storage.list_children(_join(repository, model))
        versions.update(int(n) for n in names if n.isdigit())
    return sorted(versions)


def next_version(repository: str) -> int:
    versions = existing_versions(repository)
    return versions[-1] + 1 if versions else 1


def deploy(
    onnx_path: str | Path,
    repository: str,
    *,
    variant: str = "production",
    version: int = 0,
    triton_url: str = "",
    timeout_s: float = 300.0,
) -> Deployment:
    """Writes ``onnx_path`` as version ``version`` (0: the next free one) and loads it into ``triton_url`` if given.

    Raises:
        FileExistsError: the version is already in the repository.
        eqface.export.onnx.OnnxContractError: the ONNX file does not follow the inference contract.
        RuntimeError: the server refused to load the model, or the new version did not become ready and answer.
    """
    from eqface.serving.repository import write_model_repository

    if version < 0:
        raise ValueError(f"version must be >= 0 (0: the next free one), got {version}")
    version = version or next_version(repository)
    if version in existing_versions(repository):
        raise FileExistsError(f"version {version} already exists in {repository}")
    if storage.is_remote(repository):
        with tempfile.TemporaryDirectory(prefix="eqface-repo-") as tmp:
            written = write_model_repository(onnx_path, tmp, variant=variant, version=version)
            storage.upload_tree(tmp, repository, last=tuple(f"{m}/{CONFIG_FILE}" for m in MODELS))
            spec = written.spec
    else:
        spec = write_model_repository(onnx_path, repository, variant=variant, version=version).spec
    print(f"wrote {variant} version {version} to {repository}", flush=True)
    loaded = False
    if triton_url:
        load_version(triton_url, version, spec, timeout_s)
        loaded = True
        print(f"{triton_url}: version {version} loaded and answering", flush=True)
    return Deployment(repository, version, variant, triton_url, loaded)


def _join(location: str, name: str) -> str:
    return f"{location.rstrip('/')}/{name}" if storage.is_remote(location) else str(Path(location) / name)


def triton_client(url: str):
    """(client, its tritonclient module, "grpc" or "http") for ``grpc://host:port``, ``http(s)://host:port`` or
    ``host:port`` (gRPC)."""
    parsed = urlparse(url if "://" in url else f"grpc://{url}")
    if parsed.scheme == "grpc":
        import tritonclient.grpc as client_module
    elif parsed.scheme in ("http", "https"):
        import tritonclient.http as client_module
    else:
        raise ValueError(f"Triton URL {url!r}: use grpc://HOST:PORT, http://HOST:PORT or HOST:PORT (gRPC)")
    if not parsed.netloc:
        raise ValueError(f"Triton URL {url!r} names no host")
    kwargs = {"ssl": True} if parsed.scheme == "https" else {}
    protocol = "grpc" if parsed.scheme == "grpc" else "http"
    return client_module.InferenceServerClient(parsed.netloc, **kwargs), client_module, protocol


def load_version(url: str, version: int, spec: InferenceSpec, timeout_s: float = 300.0) -> None:
    """Asks the server to (re)load every model, waits for ``version`` to be ready, then sends one request."""
    from tritonclient.utils import InferenceServerException

    from eqface.serving import control

    client, api, protocol = triton_client(url)
    headers = control.headers(control.read_key(), protocol)
    try:
        for model in MODELS:
            try:
                client.load_model(model, headers=headers)
            except InferenceServerException as exc:
                raise RuntimeError(f"{url} refused to load {model}: {exc}{_load_hint(str(exc), headers)}") from None
        _wait_ready(client, version, timeout_s)
        _smoke_request(client, api, url, spec)
    finally:
        client.close()


def _load_hint(message: str, headers: dict[str, str] | None) -> str:
    if "explicit" in message:
        return " (start Triton with --model-control-mode=explicit)"
    if "restricted" in message:
        from eqface.serving.control import KEY_ENV, KEY_FILE_ENV

        sent = "the key sent is not the server's" if headers else f"set {KEY_FILE_ENV} or {KEY_ENV}"
        return f" (model control needs the server's control key: {sent})"
    return ""


def _wait_ready(client, version: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        ready = client.is_model_ready(contract.ONNX_MODEL_NAME, str(version)) and client.is_model_ready(
            contract.ENSEMBLE_MODEL_NAME
        )
        if ready:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{contract.ONNX_MODEL_NAME} version {version} not ready after {timeout_s:.0f}s")
        time.sleep(0.5)


def _smoke_request(client, api, url: str, spec: InferenceSpec) -> None:
    """One batch through the tensor model: the contract's shapes, unit-norm embeddings, quality in [0, 1]."""
    x = np.random.default_rng(0).uniform(-1, 1, (2, *spec.input_shape)).astype(contract.INPUT_DTYPE)
    tensor = api.InferInput(contract.INPUT_NAME, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    outputs = [api.InferRequestedOutput(n) for n in (contract.EMBEDDING_NAME, contract.QUALITY_NAME)]
    result = client.infer(contract.ONNX_MODEL_NAME, [tensor], outputs=outputs)
    embedding, quality = result.as_numpy(contract.EMBEDDING_NAME), result.as_numpy(contract.QUALITY_NAME)
    if embedding.shape != (2, spec.embedding_size) or quality.shape != (2, 1):
        raise RuntimeError(f"{url}: the new version answered shapes {embedding.shape} and {quality.shape}")
    unit_norm = np.allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-3)
    if not unit_norm or not 0 <= quality.min() <= quality.max() <= 1:
        raise RuntimeError(f"{url}: the new version's outputs break the contract (norms or quality range)")
