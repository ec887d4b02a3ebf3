"""Image mode: embeddings and qualities from Triton (tritonclient.grpc.aio), micro-batched, with readiness tracking.

Two entry points of the inference contract (``eqface.contract``) are supported: the ensemble that takes encoded
image bytes (``ENSEMBLE_MODEL_NAME``, input ``IMAGE_BYTES_NAME`` BYTES [N, 1]) and the tensor model
(``ONNX_MODEL_NAME``, input ``INPUT_NAME`` FP32 [N, 3, H, W]). Both answer ``EMBEDDING_NAME`` FP32 [N, D] and
``QUALITY_NAME`` FP32 [N, 1]. Any transport failure is ``Unavailable`` and marks Triton not ready; a probe loop
re-checks readiness every ``probe_interval_s`` (server and model ready, and one real request of one image, since
Triton reports a model with a crashed python-backend stub ready) and marks it ready again once Triton answers.

The shapes come from the served model itself (Triton's model metadata, re-read by every probe, so a redeployed model
is followed): H and W of the tensor model's input, and D, which must equal the service's ``embedding_dim`` (feature
frames, templates and the gallery all have that size). A model that disagrees keeps Triton not ready and fails image
requests with ``FailedPrecondition`` naming both sizes; at start-up it is an error. The model config's parameters
give the model's calibrated aggregation thresholds (``eqface.contract.THRESHOLD_KEYS``; ``eqface.service.thresholds``).
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from eqface import contract
from eqface.aggregation import Thresholds
from eqface.service.batching import MicroBatcher
from eqface.service.config import TritonConfig
from eqface.service.errors import FailedPrecondition, Internal, ServiceError, Unavailable
from eqface.service.metrics import ServiceMetrics

log = logging.getLogger(__name__)
_MAX_MESSAGE = 2**31 - 1
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    # reconnect quickly once Triton is back (gRPC's default backoff grows to two minutes)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass(frozen=True, slots=True)
class ServedModel:
    """What the served model declares: per-item input shape [3, H, W] (tensor model; None for the bytes-in
    ensemble), embedding size D, and its calibrated thresholds (None: exported without calibration)."""

    input_shape: tuple[int, int, int] | None
    embedding_size: int
    thresholds: Thresholds | None = None
    calibration: str | None = None  # how they were derived (JSON), when the config says

    @property
    def image_size(self) -> tuple[int, int] | None:
        return None if self.input_shape is None else (self.input_shape[1], self.input_shape[2])


def served_model(
    model: str, inputs: dict[str, list[int]], outputs: dict[str, list[int]], embedding_size: int
) -> ServedModel:
    """Checks a model's declared tensors (name -> shape, batch axis -1 included or not) against the contract.

    Raises:
        FailedPrecondition: a tensor is missing, a size is dynamic, or D differs from ``embedding_size``.
    """

    def trailing(tensors: dict[str, list[int]], name: str, n: int, kind: str) -> list[int]:
        shape = tensors.get(name)
        if shape is None or len(shape) < n:
            raise FailedPrecondition(f"Triton's model {model!r} has no {kind} {name!r} of rank >= {n}: {tensors}")
        dims = list(shape[-n:])
        if any(d <= 0 for d in dims):
            raise FailedPrecondition(f"Triton's model {model!r} declares {kind} {name!r} {shape}: sizes must be fixed")
        return dims

    trailing(outputs, contract.QUALITY_NAME, 1, "output")
    (served_d,) = trailing(outputs, contract.EMBEDDING_NAME, 1, "output")
    if served_d != embedding_size:
        raise FailedPrecondition(
            f"Triton's model {model!r} returns {served_d}-d embeddings but the service is configured for "
            f"{embedding_size} (--embedding-dim {served_d} serves this model)"
        )
    if model == contract.ENSEMBLE_MODEL_NAME:
        trailing(inputs, contract.IMAGE_BYTES_NAME, 1, "input")
        return ServedModel(None, served_d)
    c, h, w = trailing(inputs, contract.INPUT_NAME, 3, "input")
    if c != contract.CHANNELS:
        raise FailedPrecondition(f"Triton's model {model!r} takes {c} channels; the contract says {contract.CHANNELS}")
    return ServedModel((c, h, w), served_d)


@dataclass(frozen=True, slots=True)
class Embedded:
    embedding: np.ndarray  # float32 [D], L2-normalised
    quality: float


class TritonEmbedder:
    """Embeds images (encoded bytes or model-input tensors [3, H, W]) on Triton, batching concurrent requests.

    ``embedding_size`` is the D the service expects; the served model must declare the same.
    """

    def __init__(
        self,
        config: TritonConfig,
        embedding_size: int,
        metrics: ServiceMetrics | None = None,
        on_ready_change: Callable[[bool], None] | None = None,
        on_model_change: Callable[[ServedModel], None] | None = None,
    ) -> None:
        self.config = config
        self.embedding_size = embedding_size
        self.served: ServedModel | None = None  # from the model's metadata, once a probe read it
        self.problem: str | None = None  # why the served model cannot be used, when it cannot
        self._probe_failure: str | None = None  # what the last probe request answered, when it failed
        self.model = contract.ENSEMBLE_MODEL_NAME if config.input_kind == "bytes" else contract.ONNX_MODEL_NAME
        self._metrics = metrics
        self._on_ready_change = on_ready_change or (lambda ready: None)
        self._on_model_change = on_model_change or (lambda served: None)
        self._client: Any = None
        self._batcher = MicroBatcher(self._infer, config.max_batch, config.max_wait_s, config.max_concurrent_batches)
        self._probe_task: asyncio.Task[None] | None = None
        self.ready = False

    async def start(self) -> None:
        import tritonclient.grpc.aio as triton_aio  # only image mode needs tritonclient

        self._client = triton_aio.InferenceServerClient(self.config.url, channel_args=_CHANNEL_ARGS)
        self._batcher.start()
        await self.probe()
        if self.problem is not None:
            raise FailedPrecondition(self.problem)
        self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop(), name="triton-probe")

    async def stop(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
        await self._batcher.stop()
        if self._client is not None:
            await self._client.close()

    def image_size(self) -> tuple[int, int]:
        """(H, W) of the tensor model's input, as served (tensor mode only)."""
        self._check_ready()
        size = self.served.image_size if self.served is not None else None
        if size is None:
            raise FailedPrecondition(f"model {self.model!r} takes encoded images, not tensors")
        return size

    async def embed(self, images: list[Any]) -> list[Embedded]:
        self._check_ready()
        return await self._batcher.submit(images)

    def _check_ready(self) -> None:
        if self.problem is not None:
            raise FailedPrecondition(self.problem)
        if not self.ready:
            raise Unavailable(f"Triton at {self.config.url} is not ready (model {self.model!r}); retry later")

    async def probe(self) -> bool:
        """Checks that the server and the model are ready and reads the model's shapes; updates ``ready``."""
        served, problem = None, None
        try:
            timeout = self.config.timeout_s
            ok = await self._client.is_server_ready(client_timeout=timeout) and await self._client.is_model_ready(
                self.model, client_timeout=timeout
            )
            if ok:
                served = await self._read_served_model()
                ok = await self._probe_inference(served)
        except FailedPrecondition as exc:
            ok, problem = False, str(exc)
        except Exception as exc:  # tritonclient raises its own exception type for every transport error
            log.debug("Triton probe failed: %s", exc)
            ok = False
        if problem != self.problem and problem is not None:
            log.error("%s", problem)
        self.problem = problem
        if served is not None and served != self.served:
            self.served = served
            self._on_model_change(served)
        self._set_ready(bool(ok))
        return self.ready

    async def _probe_inference(self, served: ServedModel) -> bool:
        """One real request of one image: Triton can report a model ready that fails every request (a crashed
        python-backend stub answers "Stub process … is not healthy" until Triton restarts). A timeout is left alone:
        it may only mean overload, which the readiness calls' own timeouts judge."""
        from tritonclient.utils import InferenceServerException

        bytes_in = self.config.input_kind == "bytes"
        image = _probe_jpeg() if bytes_in else np.zeros(served.input_shape, contract.INPUT_DTYPE)
        try:
            await self._request([image], served.input_shape)
        except InferenceServerException as exc:
            reason = _reason(exc.status())
            if reason == "deadline_exceeded":
                return self.ready
            self._count_error(f"probe_{reason}")
            failure = str(exc.message() or exc)
            if failure != self._probe_failure:
                log.error(
                    "Triton %s reports model %r ready but a probe request failed (%s): image requests answer "
                    "UNAVAILABLE until it answers again; a crashed python-backend stub does not come back by itself, "
                    "restart Triton",
                    self.config.url,
                    self.model,
                    failure,
                )
            self._probe_failure = failure
            return False
        self._probe_failure = None
        return True

    async def _read_served_model(self) -> ServedModel:
        meta = await self._client.get_model_metadata(self.model, client_timeout=self.config.timeout_s)
        inputs = {t.name: [int(d) for d in t.shape] for t in meta.inputs}
        outputs = {t.name: [int(d) for d in t.shape] for t in meta.outputs}
        served = served_model(self.model, inputs, outputs, self.embedding_size)
        config = (await self._client.get_model_config(self.model, client_timeout=self.config.timeout_s)).config
        parameters = {key: p.string_value for key, p in config.parameters.items()}
        try:
            thresholds = Thresholds.from_metadata(parameters)
        except ValueError as exc:
            raise FailedPrecondition(f"Triton's model {self.model!r} has broken threshold parameters: {exc}") from None
        note = parameters.get(contract.CALIBRATION_KEY)
        return ServedModel(served.input_shape, served.embedding_size, thresholds, note)

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            log.warning("Triton %s is %s", self.config.url, "ready" if ready else "NOT ready")
            self._on_ready_change(ready)

    async def _request(self, images: list[Any], shape: tuple[int, int, int] | None):
        """One Triton request of ``images``: encoded bytes to the ensemble, or [C, H, W] arrays (``shape``) to the
        tensor model; both outputs requested."""
        from tritonclient.grpc import InferInput, InferRequestedOutput

        n = len(images)
        if self.config.input_kind == "bytes":
            tensor = InferInput(contract.IMAGE_BYTES_NAME, [n, 1], "BYTES")
            tensor.set_data_from_numpy(np.array(images, dtype=object).reshape(n, 1))
        else:
            tensor = InferInput(contract.INPUT_NAME, [n, *shape], "FP32")
            tensor.set_data_from_numpy(np.stack(images).astype(contract.INPUT_DTYPE, copy=False))
        outputs = [InferRequestedOutput(contract.EMBEDDING_NAME), InferRequestedOutput(contract.QUALITY_NAME)]
        return await self._client.infer(self.model, [tensor], outputs=outputs, client_timeout=self.config.timeout_s)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.probe_interval_s)
            await self.probe()

    async def _infer(self, images: list[Any]) -> list[Embedded]:
        from tritonclient.utils import InferenceServerException

        n = len(images)
        shape = self.served.input_shape if self.served is not None else None
        if self.config.input_kind != "bytes" and shape is None:  # image_size() was checked before the conversion
            raise Unavailable(f"the input shape of model {self.model!r} is not known yet; retry later")
        started = time.perf_counter()
        try:
            result = await self._request(images, shape)
        except InferenceServerException as exc:
            reason = _reason(exc.status())
            self._count_error(reason)
            if reason == "unavailable":  # unreachable: fail fast until the probe sees it back
                self._set_ready(False)
            # A timeout may only mean overload: the request fails, readiness is left to the probe's own timeout.
            raise Unavailable(f"Triton inference failed: {exc}") from None
        finally:
            if self._metrics is not None:
                self._metrics.observe_stage("triton", time.perf_counter() - started)
                self._metrics.triton_batch.observe(n)
        try:
            embeddings = result.as_numpy(contract.EMBEDDING_NAME)
            return _unpack(embeddings, result.as_numpy(contract.QUALITY_NAME), n, self.embedding_size)
        except ServiceError:
            self._count_error("bad_output")
            raise

    def _count_error(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.triton_errors.labels(reason).inc()


@functools.cache
def _probe_jpeg() -> bytes:
    """A 32×32 mid-grey JPEG: the probe request of the bytes-in ensemble (decoded and resized like any image)."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(out, format="JPEG")
    return out.getvalue()


def _reason(status: str | None) -> str:
    return (status or "unknown").rsplit(".", 1)[-1].lower()


def _unpack(embeddings: Any, qualities: Any, n: int, embedding_size: int) -> list[Embedded]:
    """Checks the model's answer against the contract and L2-normalises the embeddings."""
    if embeddings is None or qualities is None:
        raise Internal("Triton's answer lacks the embedding or quality output")
    if embeddings.shape != (n, embedding_size):
        raise Internal(f"model returned embeddings {embeddings.shape}, the contract says ({n}, {embedding_size})")
    q = np.asarray(qualities, dtype=np.float64).reshape(-1)
    if q.shape != (n,):
        raise Internal(f"model returned qualities {qualities.shape}, the contract says ({n}, 1)")
    e = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(e, axis=1)
    if not (np.all(np.isfinite(norms)) and np.all(np.isfinite(q))):
        raise Internal("model returned NaN or inf")
    if np.any(norms < 1e-12) or np.any((q < 0) | (q > 1)):
        raise Internal("model returned a zero embedding or a quality outside [0, 1]")
    e = e / norms[:, None]
    return [Embedded(e[i], float(q[i])) for i in range(n)]
