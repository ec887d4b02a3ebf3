"""The service's configuration: frozen dataclasses, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from eqface.contract import DEFAULT_EMBEDDING_SIZE
from eqface.service.hygiene import HygieneConfig
from eqface.service.limits import LimitsConfig
from eqface.service.security.config import SecurityConfig
from eqface.service.store import STORES, url_scheme

MiB = 1024 * 1024
TritonInput = Literal["bytes", "tensor"]


@dataclass(frozen=True)
class TritonConfig:
    """How image-mode frames reach Triton.

    Attributes:
        url: host:port of Triton's gRPC endpoint.
        input_kind: "bytes" sends the encoded images to the ensemble model (contract ``ENSEMBLE_MODEL_NAME``, input
            ``image``); "tensor" decodes and normalises them here and calls the tensor model (``ONNX_MODEL_NAME``).
        max_batch: most images in one Triton request (micro-batching across concurrent frames and streams).
        max_wait_s: how long the first image of a micro-batch waits for others.
        timeout_s: client-side timeout of one inference or health call.
        probe_interval_s: how often readiness is re-checked (how fast the service notices Triton back).
        max_concurrent_batches: Triton requests in flight at once.
    """

    url: str
    input_kind: TritonInput = "bytes"
    max_batch: int = 32
    max_wait_s: float = 0.002
    timeout_s: float = 2.0
    probe_interval_s: float = 1.0
    max_concurrent_batches: int = 4

    def __post_init__(self) -> None:
        if not self.url or "/" in self.url:
            raise ValueError(f"triton url must be host:port (gRPC), got {self.url!r}")
        if self.input_kind not in ("bytes", "tensor"):
            raise ValueError(f"triton input_kind must be 'bytes' or 'tensor', got {self.input_kind!r}")
        _positive(max_batch=self.max_batch, timeout_s=self.timeout_s, probe_interval_s=self.probe_interval_s)
        _positive(max_concurrent_batches=self.max_concurrent_batches)
        if self.max_wait_s < 0:
            raise ValueError(f"triton max_wait_s must be >= 0, got {self.max_wait_s}")


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the aggregation server needs; ``eqface.service.cli`` builds it from the command line.

    Attributes:
        host, port: gRPC listen address; port 0 picks a free port (the bound one is logged and reported).
        metrics_port: Prometheus /metrics HTTP port; 0 disables the endpoint.
        store_url: ``sqlite:///path.db`` (default, durable, nothing to set up) or ``redis://host:port/db``.
        triton: image mode; None serves feature mode only (image frames are then FAILED_PRECONDITION).
        f_th, s_th: progressive QWFA gates (paper Eq. 8-9): similarity > f_th and quality > s_th to merge a frame.
            None (the default): the served model's calibrated values, else the paper's (``eqface.service.thresholds``
            states the rule); a number overrides both.
        reseed_low_quality: a first frame with quality <= s_th is a provisional seed that the first frame with
            quality > s_th replaces (see ``ProgressiveQWFA``); False keeps the paper's strict F_1 = f_1.
        embedding_dim: the embedding size D of feature frames, templates and the gallery; in image mode the served
            model must return the same D (checked against Triton's model metadata). The input image size is not
            configured: tensor mode reads it from the served model.
        top_k, max_top_k: default and largest number of gallery matches per answer.
        max_message_bytes: largest gRPC message accepted (bigger ones fail with RESOURCE_EXHAUSTED).
        max_frames_per_message: most frames in one StreamFrames message (RESOURCE_EXHAUSTED above).
        max_image_bytes, max_image_pixels: per-image limits (INVALID_ARGUMENT above); the pixel limit stops
            decompression bombs.
        cache_subjects: subjects kept decoded in the in-memory LRU cache (the store holds them all).
        max_commit_frames: most frames applied in one group-commit transaction (a group's QWFA arithmetic runs on
            the event loop, ~25 µs a frame, so this also bounds how long the loop is busy at once).
        max_inflight_messages: messages of one stream read ahead of their acknowledgement (flow control).
        max_concurrent_rpcs: unary calls (health checks included) served at once on top of the streams
            (``limits.max_streams``); gRPC refuses more with RESOURCE_EXHAUSTED.
        active_window_s: a subject counts as active while it received a frame in this window.
        shutdown_grace_s: how long SIGTERM waits for in-flight frames to be committed and answered.
        hygiene: retention of templates and the audit log (``eqface.service.hygiene``).
        limits: memory in flight, stream caps, per-tenant rates, keepalive and connection age (``LimitsConfig``).
        security: TLS, client certificates, bearer tokens, reflection, the plaintext health port
            (``eqface.service.security.config``); the default authenticates nobody, so the server refuses to start
            until credentials or ``insecure`` are set.
    """

    host: str = "[::]"
    port: int = 50051
    metrics_port: int = 9464
    store_url: str = "sqlite:///eqface-aggregator.db"
    triton: TritonConfig | None = None
    f_th: float | None = None
    s_th: float | None = None
    reseed_low_quality: bool = True
    embedding_dim: int = DEFAULT_EMBEDDING_SIZE
    top_k: int = 5
    max_top_k: int = 100
    max_message_bytes: int = 16 * MiB
    max_frames_per_message: int = 1024
    max_image_bytes: int = 4 * MiB
    max_image_pixels: int = 16_000_000
    cache_subjects: int = 10_000
    max_commit_frames: int = 2048
    max_inflight_messages: int = 32
    max_concurrent_rpcs: int = 1000
    active_window_s: float = 60.0
    shutdown_grace_s: float = 10.0
    hygiene: HygieneConfig = field(default_factory=HygieneConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    security: SecurityConfig = SecurityConfig()

    def __post_init__(self) -> None:
        if self.f_th is not None and not -1.0 <= self.f_th <= 1.0:
            raise ValueError(f"f_th is a cosine similarity threshold in [-1, 1], got {self.f_th}")
        if self.s_th is not None and not 0.0 <= self.s_th <= 1.0:
            raise ValueError(f"s_th is a quality threshold in [0, 1], got {self.s_th}")
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ValueError(f"{name} must be in [0, 65535], got {value}")
        if url_scheme(self.store_url) not in STORES:
            raise ValueError(
                f"store_url must be sqlite:///path or redis://host:port/db (schemes: {', '.join(STORES.names())}), "
                f"got {self.store_url!r}"
            )
        _positive(
            embedding_dim=self.embedding_dim,
            top_k=self.top_k,
            max_message_bytes=self.max_message_bytes,
            max_frames_per_message=self.max_frames_per_message,
            max_image_bytes=self.max_image_bytes,
            max_image_pixels=self.max_image_pixels,
            cache_subjects=self.cache_subjects,
            max_commit_frames=self.max_commit_frames,
            max_inflight_messages=self.max_inflight_messages,
            max_concurrent_rpcs=self.max_concurrent_rpcs,
            active_window_s=self.active_window_s,
        )
        if self.max_top_k < self.top_k:
            raise ValueError(f"max_top_k ({self.max_top_k}) must be >= top_k ({self.top_k})")
        if self.shutdown_grace_s < 0:
            raise ValueError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")


def _positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
