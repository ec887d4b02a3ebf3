"""Image mode: embeddings and qualities from Triton (tritonclient.grpc.aio), micro-batched, with readiness tracking.

Two entry points of the inference contract (``eqface.contract``) are supported: the ensemble that takes encoded
image bytes (``ENSEMBLE_MODEL_NAME``, input ``IMAGE_BYTES_NAME`` BYTES [N, 1]) and the tensor model
(``ONNX_MODEL_NAME``, input ``INPUT_NAME`` FP32 [N, 3, H, W]). Both answer ``EMBEDDING_NAME`` FP32 [N, D] and
``QUALITY_NAME`` FP32 [N, 1]. Any transport failure is ``Unavailable`` and marks Triton not ready; a probe loop
re-checks readiness every ``probe_interval_s`` and marks it ready again once Triton answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from eqface import contract
from eqface.service.batching import MicroBatcher
from eqface.service.config import TritonConfig
from eqface.service.errors import Internal, ServiceError, Unavailable
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
class Embedded:
    embedding: np.ndarray  # float32 [D], L2-normalised
    quality: float


class TritonEmbedder:
    """Embeds images (encoded bytes or model-input tensors [3, H, W]) on Triton, batching concurrent requests."""

    def __init__(
        self,
        config: TritonConfig,
        spec: contract.InferenceSpec,
        metrics: ServiceMetrics | None = None,
        on_ready_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.config = config
        self.spec = spec
        self.model = contract.ENSEMBLE_MODEL_NAME if config.input_kind == "bytes" else contract.ONNX_MODEL_NAME
        self._metrics = metrics
        self._on_ready_change = on_ready_change or (lambda ready: None)
        self._client: Any = None
        self._batcher = MicroBatcher(self._infer, config.max_batch, config.max_wait_s, config.max_concurrent_batches)
        self._probe_task: asyncio.Task[None] | None = None
        self.ready = False

    async def start(self) -> None:
        import tritonclient.grpc.aio as triton_aio  # only image mode needs tritonclient

        self._client = triton_aio.InferenceServerClient(self.config.url, channel_args=_CHANNEL_ARGS)
        self._batcher.start()
        await self.probe()
        self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop(), name="triton-probe")

    async def stop(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
        await self._batcher.stop()
        if self._client is not None:
            await self._client.close()

    async def embed(self, images: list[Any]) -> list[Embedded]:
        if not self.ready:
            raise Unavailable(f"Triton at {self.config.url} is not ready (model {self.model!r}); retry later")
        return await self._batcher.submit(images)

    async def probe(self) -> bool:
        """Checks that the server and the model are ready; updates ``ready``."""
        try:
            timeout = self.config.timeout_s
            ok = await self._client.is_server_ready(client_timeout=timeout) and await self._client.is_model_ready(
                self.model, client_timeout=timeout
            )
        except Exception as exc:  # tritonclient raises its own exception type for every transport error
            log.debug("Triton probe failed: %s", exc)
            ok = False
        self._set_ready(bool(ok))
        return self.ready

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            log.warning("Triton %s is %s", self.config.url, "ready" if ready else "NOT ready")
            self._on_ready_change(ready)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.probe_interval_s)
            await self.probe()

    async def _infer(self, images: list[Any]) -> list[Embedded]:
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import InferenceServerException

        n = len(images)
        if self.config.input_kind == "bytes":
            tensor = InferInput(contract.IMAGE_BYTES_NAME, [n, 1], "BYTES")
            tensor.set_data_from_numpy(np.array(images, dtype=object).reshape(n, 1))
        else:
            tensor = InferInput(contract.INPUT_NAME, [n, *self.spec.input_shape], "FP32")
            tensor.set_data_from_numpy(np.stack(images).astype(contract.INPUT_DTYPE, copy=False))
        outputs = [InferRequestedOutput(contract.EMBEDDING_NAME), InferRequestedOutput(contract.QUALITY_NAME)]
        started = time.perf_counter()
        try:
            result = await self._client.infer(
                self.model, [tensor], outputs=outputs, client_timeout=self.config.timeout_s
            )
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
            return _unpack(embeddings, result.as_numpy(contract.QUALITY_NAME), n, self.spec)
        except ServiceError:
            self._count_error("bad_output")
            raise

    def _count_error(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.triton_errors.labels(reason).inc()


def _reason(status: str | None) -> str:
    return (status or "unknown").rsplit(".", 1)[-1].lower()


def _unpack(embeddings: Any, qualities: Any, n: int, spec: contract.InferenceSpec) -> list[Embedded]:
    """Checks the model's answer against the contract and L2-normalises the embeddings."""
    if embeddings is None or qualities is None:
        raise Internal("Triton's answer lacks the embedding or quality output")
    if embeddings.shape != (n, spec.embedding_size):
        raise Internal(f"model returned embeddings {embeddings.shape}, the contract says ({n}, {spec.embedding_size})")
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
