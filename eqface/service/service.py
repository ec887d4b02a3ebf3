"""The aggregation service's domain API: frames → durable progressive templates, subjects, gallery, identification.

Everything here takes and returns plain Python/numpy types; ``servicer.py`` translates them to and from protobuf.
A stream's frames go through ``stream()``: ``flow.StreamFlow`` decides when each step below runs on a message
(``prepare`` → ``embed`` → ``submit`` → ``finish``), this module says what each step does.
Every id a caller sends is turned into its tenant's store key here (``eqface.service.tenancy``), and back on the
way out. Blocking store calls run on one store thread (``StoreThread``); image decoding on a small thread pool;
everything else, the QWFA arithmetic included, on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from eqface import contract
from eqface.aggregation import qwfa
from eqface.data.decode import ImageDecodeError, ImageLimits, decode_image
from eqface.service.aggregator import FrameInput, FrameOutcome, FrameStatus
from eqface.service.audit import AuditLog
from eqface.service.caller import DEFAULT_TENANT
from eqface.service.config import ServiceConfig
from eqface.service.engine import (
    CommittedBatch,
    GroupCommitter,
    StoreThread,
    StreamToken,
    SubjectEngine,
    before_deadline,
)
from eqface.service.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from eqface.service.flow import StreamFlow
from eqface.service.gallery import Match, TenantGalleries
from eqface.service.inputs import (
    RawFrame,
    check_display_name,
    check_id,
    check_quality,
    check_sequence,
    decode_page_token,
    encode_page_token,
    page_size,
    parse_embedding,
)
from eqface.service.limits import FRAME_OVERHEAD_BYTES
from eqface.service.metrics import ServiceMetrics
from eqface.service.quota import Quotas
from eqface.service.retention import Purged, RetentionSweeper
from eqface.service.state import AggregationParams, SubjectRecord
from eqface.service.store import IdentityRecord, SubjectStore
from eqface.service.tenancy import TenantKeys, keys_of
from eqface.service.thresholds import ResolvedThresholds, resolve_thresholds
from eqface.service.triton import ServedModel, TritonEmbedder

log = logging.getLogger(__name__)
T = TypeVar("T")
STORE_CHECK_INTERVAL_S = 1.0
SUBJECT_COUNT_INTERVAL_S = 15.0
DEFAULT_KEYS = keys_of(DEFAULT_TENANT)


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """One message of a frame stream: its frames, and how many gallery matches to return (0: the default)."""

    frames: list[RawFrame]
    top_k: int = 0
    nbytes: int = 0  # the frames' payload bytes (images, embeddings, ids), for the memory accounting


@dataclass
class PreparedMessage:
    """One stream message on its way to its answer: a FrameInput or a final outcome per frame."""

    slots: list[FrameInput | FrameOutcome | None]
    top_k: int
    keys: TenantKeys  # the stream's tenant: its FrameInputs carry store keys, its answers the caller's ids
    images: list[tuple[int, RawFrame]] = field(default_factory=list)  # frames still waiting for Triton


@dataclass(frozen=True, slots=True)
class MessageResult:
    outcomes: list[FrameOutcome]  # one per request frame, in order
    matches: list[tuple[str, list[Match]]]  # per subject with a template, when the gallery is not empty


@dataclass(frozen=True, slots=True)
class TemplateSource:
    """Exactly one of: a subject's current template, images of one person, or an embedding."""

    subject_id: str | None = None
    images: tuple[bytes, ...] | None = None
    embedding: bytes | None = None


def invalid_outcome(frame: RawFrame, error: ServiceError) -> FrameOutcome:
    # Counters stay 0: the subject is not read for a frame that cannot be applied.
    quality = frame.quality if frame.image is None else 0.0
    return FrameOutcome(
        frame.subject_id, frame.sequence, FrameStatus.INVALID, quality, None, 0.0, 0, 0, 0, str(error), error
    )


class AggregatorService:
    def __init__(self, config: ServiceConfig, store: SubjectStore, metrics: ServiceMetrics | None = None) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics or ServiceMetrics(config.active_window_s, max(config.cache_subjects, 100_000))
        self.thresholds = self._use_thresholds(resolve_thresholds(config.f_th, config.s_th, None), None)
        self.params = AggregationParams(self.thresholds.f_th, self.thresholds.s_th, config.reseed_low_quality)
        self.io = StoreThread()
        self.engine = SubjectEngine(store, self.params, config.cache_subjects, self.io, self.metrics)
        self.committer = GroupCommitter(self.engine, config.max_commit_frames, self.metrics)
        self.gallery = TenantGalleries(config.embedding_dim)
        self.image_limits = ImageLimits(config.max_image_bytes, config.max_image_pixels)
        self.audit = AuditLog(config.hygiene.audit)
        self.retention = RetentionSweeper(config.hygiene.retention, store, self.io, self.audit, self._forget_purged)
        self.quotas = Quotas(config.limits)
        self.metrics.inflight_bytes.set_function(lambda: self.quotas.bytes)
        self.readiness: dict[str, bool] = {"store": False}
        self.on_readiness_change: Callable[[dict[str, bool]], None] = lambda readiness: None
        self.draining = asyncio.Event()
        self.embedder: TritonEmbedder | None = None
        if config.triton is not None:
            self.readiness["triton"] = False
            self.embedder = TritonEmbedder(
                config.triton, config.embedding_dim, self.metrics, self._triton_ready, self._served_model_changed
            )
        for name in self.readiness:
            self.metrics.dependency_up.labels(name).set(0)
        self._decode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="eqface-decode")
        self._background: asyncio.Task[None] | None = None
        self.metrics.cached_subjects.set_function(lambda: len(self.engine.cache))

    # ----------------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.committer.start()
        await self._check_store()
        await self.refresh_gallery()
        await self.retention.start()
        if self.embedder is not None:
            await self.embedder.start()
        self._background = asyncio.get_running_loop().create_task(self._watch(), name="eqface-watch")

    async def stop(self) -> None:
        """Stops after the streams ended: commits what is queued, then closes Triton and the store."""
        await self.retention.stop()
        if self._background is not None:
            self._background.cancel()
            await asyncio.gather(self._background, return_exceptions=True)
        if self.embedder is not None:
            await self.embedder.stop()
        await self.committer.stop()
        self.io.shutdown()
        self._decode_pool.shutdown(wait=True)
        self.store.close()
        self.audit.close()

    @property
    def ready(self) -> bool:
        """Whether the service serves: the store answers and it is not draining.

        Triton is not part of it: feature frames, stored-template reads (GetTemplate, ListSubjects, Identify and
        Enroll from an embedding or a stored subject) and deletes need only the store, so a Triton outage must not
        take the replica out of its Service. While Triton is down only what needs an embedding from an image answers
        UNAVAILABLE; ``readiness["triton"]`` (health ``<service>/triton``) says when.
        """
        return self.readiness.get("store", False) and not self.draining.is_set()

    def _set_readiness(self, name: str, ok: bool) -> None:
        if self.readiness.get(name) != ok:
            self.readiness[name] = ok
            self.metrics.dependency_up.labels(name).set(1 if ok else 0)
            self.on_readiness_change(dict(self.readiness))

    def _triton_ready(self, ready: bool) -> None:
        self._set_readiness("triton", ready)

    def _served_model_changed(self, served: ServedModel) -> None:
        """A served model was read (start-up or a redeployment): its calibrated thresholds apply from now on."""
        resolved = resolve_thresholds(self.config.f_th, self.config.s_th, served.thresholds)
        if resolved != self.thresholds:
            self.thresholds = self._use_thresholds(resolved, served)
            self.params = AggregationParams(resolved.f_th, resolved.s_th, self.config.reseed_low_quality)
            self.engine.params = self.params

    def _use_thresholds(self, resolved: ResolvedThresholds, served: ServedModel | None) -> ResolvedThresholds:
        """Logs the thresholds and their sources and exports them as the aggregation_threshold gauge."""
        if served is None:
            origin = "feature mode: no served model" if self.config.triton is None else "until Triton's model is read"
        else:
            origin = f"served model, calibration {served.calibration or 'not recorded'}"
        if served is None and self.config.triton is not None:
            level = logging.DEBUG  # provisional: replaced once the probe has read the model
        elif "paper_default" in resolved.sources.values():
            level = logging.WARNING
        else:
            level = logging.INFO
        log.log(level, "aggregation thresholds: %s [%s]", resolved.describe(), origin)
        self.metrics.threshold.clear()
        for name, source in resolved.sources.items():
            self.metrics.threshold.labels(name, source).set(getattr(resolved, name))
        return resolved

    async def _check_store(self) -> None:
        try:
            await self.io(self.store.ping)
            self._set_readiness("store", True)
        except Unavailable as exc:
            log.warning("store check failed: %s", exc)
            self._set_readiness("store", False)

    async def _watch(self) -> None:
        last_count = 0.0
        while True:
            await asyncio.sleep(STORE_CHECK_INTERVAL_S)
            await self._check_store()
            try:
                await self.refresh_gallery()
                if time.monotonic() - last_count >= SUBJECT_COUNT_INTERVAL_S:
                    self.metrics.stored_subjects.set(await self.io(self.store.count_subjects))
                    last_count = time.monotonic()
            except ServiceError as exc:
                log.warning("background refresh failed: %s", exc)

    # --------------------------------------------------------------------------------------------------- frames
    @contextlib.asynccontextmanager
    async def stream(
        self,
        requests: AsyncIterator[StreamRequest],
        deadline: float | None,
        *,
        tenant: str = DEFAULT_TENANT,
        connection: str = "",
    ) -> AsyncIterator[StreamFlow[StreamRequest, PreparedMessage, CommittedBatch, MessageResult]]:
        """One frame stream of ``tenant`` on ``connection`` (the peer): iterate the yielded flow for the answers, in
        order (see ``flow.StreamFlow``).

        Raises ResourceExhausted (before yielding) when the tenant, the connection or the server has no stream left.
        """
        quota = self.quotas.open_stream(tenant, connection)
        window, idle = self.config.max_inflight_messages, self.config.limits.stream_idle_timeout_s
        steps = _TenantSteps(self, keys_of(tenant))
        flow = StreamFlow(steps, requests, window, deadline, self.draining, quota, _cost, idle or None)
        self.metrics.open_streams.inc()
        try:
            yield flow
        finally:
            flow.close()
            self.metrics.open_streams.dec()

    def prepare(self, request: StreamRequest, keys: TenantKeys = DEFAULT_KEYS) -> PreparedMessage:
        """Validates a message's frames; invalid ones get their final outcome now, image frames wait for Triton."""
        top_k = self.resolve_top_k(request.top_k)
        frames = request.frames
        if len(frames) > self.config.max_frames_per_message:
            raise ResourceExhausted(
                f"message has {len(frames)} frames; the limit is {self.config.max_frames_per_message}"
            )
        message = PreparedMessage([], top_k, keys)
        dim = self.config.embedding_dim
        for i, frame in enumerate(frames):
            try:
                check_id(frame.subject_id)
                check_sequence(frame.sequence)
                if frame.image is not None:
                    if self.embedder is None:
                        raise FailedPrecondition("image frames need Triton (start with --triton-url); send features")
                    message.images.append((i, frame))
                    message.slots.append(None)
                elif frame.embedding is not None:
                    embedding = parse_embedding(frame.embedding, dim)
                    quality = check_quality(frame.quality)
                    message.slots.append(FrameInput(keys.key(frame.subject_id), frame.sequence, embedding, quality))
                else:
                    raise InvalidArgument("frame has neither an image nor features")
            except ServiceError as exc:
                message.slots.append(invalid_outcome(frame, exc))
        return message

    def needs_embedding(self, message: PreparedMessage) -> bool:
        return bool(message.images)

    async def embed(self, message: PreparedMessage) -> None:
        """Decodes and embeds the message's image frames; a frame that does not decode fails alone.

        Raises Unavailable when Triton is down, FailedPrecondition when the served model disagrees with the config.
        """
        if not message.images:
            return
        decoded = await self._decode([frame.image for _, frame in message.images])  # type: ignore[misc]
        todo = []
        for (i, frame), item in zip(message.images, decoded):
            if isinstance(item, ServiceError):
                message.slots[i] = invalid_outcome(frame, item)
            else:
                todo.append((i, frame, item))
        message.images = []
        if not todo:
            return
        if self.embedder is None:  # prepare() only queues images when Triton is configured
            raise FailedPrecondition("image frames need Triton (start with --triton-url)")
        embedded = await self.embedder.embed([item for _, _, item in todo])
        for (i, frame, _), result in zip(todo, embedded):
            key = message.keys.key(frame.subject_id)
            message.slots[i] = FrameInput(key, frame.sequence, result.embedding, result.quality)

    async def _decode(self, images: list[bytes]) -> list[Any]:
        started = time.perf_counter()
        tensor_mode = self.embedder is not None and self.embedder.config.input_kind == "tensor"
        size = self.embedder.image_size() if tensor_mode else None  # type: ignore[union-attr]
        decoded = await asyncio.get_running_loop().run_in_executor(
            self._decode_pool, _decode_all, images, self.image_limits, size
        )
        self.metrics.observe_stage("decode", time.perf_counter() - started)
        return decoded

    def submit(self, message: PreparedMessage, deadline: float | None, token: StreamToken) -> asyncio.Future:
        frames = [slot for slot in message.slots if isinstance(slot, FrameInput)]
        want_templates = len(self.gallery.of(message.keys.tenant)) > 0
        return self.committer.submit(frames, deadline, token, want_templates=want_templates)

    def finish(self, message: PreparedMessage, committed: CommittedBatch) -> MessageResult:
        keys = message.keys
        invalid = [slot for slot in message.slots if isinstance(slot, FrameOutcome)]
        # by store key: two tenants' subjects of the same id are two active subjects
        self.metrics.observe_outcomes(committed.outcomes + invalid if invalid else committed.outcomes)
        applied = iter(committed.outcomes)
        if keys.prefix:  # the committer answers with store keys; the caller sent ids
            applied = iter([o._replace(subject_id=keys.id(o.subject_id)) for o in committed.outcomes])
        outcomes = [slot if isinstance(slot, FrameOutcome) else next(applied) for slot in message.slots]
        gallery = self.gallery.of(keys.tenant)
        matches = [(keys.id(sid), gallery.search(t, message.top_k)) for sid, t in committed.templates.items()]
        return MessageResult(outcomes, matches)

    def resolve_top_k(self, requested: int) -> int:
        if requested == 0:
            return self.config.top_k
        if requested > self.config.max_top_k:
            raise InvalidArgument(f"top_k {requested} exceeds the server's limit {self.config.max_top_k}")
        return requested

    # ------------------------------------------------------------------------------------------------- subjects
    # A subject of another tenant is a key that does not exist: the same store miss, the same NotFound message.
    async def get_subject(self, subject_id: str, *, tenant: str = DEFAULT_TENANT) -> SubjectRecord:
        keys = keys_of(tenant)
        with _ids_of(keys, subject_id):
            record = await self.engine.read(keys.key(check_id(subject_id)))
        return dataclasses.replace(record, subject_id=subject_id) if keys.prefix else record

    async def reset_subject(
        self, subject_id: str, deadline: float | None, *, tenant: str = DEFAULT_TENANT
    ) -> SubjectRecord:
        keys = keys_of(tenant)
        with _ids_of(keys, subject_id):
            record = await self.engine.reset(keys.key(check_id(subject_id)), deadline)
        return dataclasses.replace(record, subject_id=subject_id) if keys.prefix else record

    async def delete_subject(self, subject_id: str, deadline: float | None, *, tenant: str = DEFAULT_TENANT) -> None:
        keys = keys_of(tenant)
        with _ids_of(keys, subject_id):
            await self.engine.delete(keys.key(check_id(subject_id)), deadline)
        self.metrics.active.forget(keys.key(subject_id))

    async def _forget_purged(self, purged: Purged) -> None:
        """Retention deleted these records from the store: no copy stays in memory either."""
        self.engine.cache.discard(purged.subjects)
        for subject_id in purged.subjects:
            self.metrics.active.forget(subject_id)
        if purged.identities:
            await self.refresh_gallery()

    async def list_subjects(
        self, requested_size: int, token: str, *, tenant: str = DEFAULT_TENANT
    ) -> tuple[list[str], str]:
        keys = keys_of(tenant)
        size, after = page_size(requested_size), decode_page_token(token)
        ids = keys.page(await self.io(self.store.list_subjects, keys.after(after), size + 1))
        return ids[:size], encode_page_token(ids[size - 1]) if len(ids) > size else ""

    # -------------------------------------------------------------------------------------------------- gallery
    async def refresh_gallery(self) -> None:
        version = await self.io(self.store.gallery_version)
        if version != self.gallery.version:
            version, records = await self.io(self.store.load_gallery)
            self.gallery.replace(version, records)  # split by tenant
            self.metrics.gallery_size.set(len(self.gallery))

    async def template_from(
        self, source: TemplateSource, *, tenant: str = DEFAULT_TENANT
    ) -> tuple[np.ndarray, list[float]]:
        """An L2-normalised template (a subject's: of ``tenant``), and the image qualities when the source is images."""
        if source.subject_id is not None:
            record = await self.get_subject(source.subject_id, tenant=tenant)
            template = record.aggregate.template
            if template is None:
                raise FailedPrecondition(f"subject {source.subject_id!r} has no template (no frames since a reset)")
            return template, []
        if source.embedding is not None:
            return parse_embedding(source.embedding, self.config.embedding_dim), []
        if source.images is not None:
            return await self._template_from_images(list(source.images))
        raise InvalidArgument("set one of subject_id, images or embedding")

    async def _template_from_images(self, images: list[bytes]) -> tuple[np.ndarray, list[float]]:
        if not images:
            raise InvalidArgument("images is empty")
        if len(images) > self.config.max_frames_per_message:
            raise ResourceExhausted(f"{len(images)} images; the limit is {self.config.max_frames_per_message}")
        if self.embedder is None:
            raise FailedPrecondition("images need Triton (start the server with --triton-url); send an embedding")
        decoded = await self._decode(images)
        for i, item in enumerate(decoded):
            if isinstance(item, ServiceError):
                raise InvalidArgument(f"image {i}: {item}")
        embedded = await self.embedder.embed(decoded)
        features = np.stack([e.embedding for e in embedded])
        qualities = np.array([e.quality for e in embedded])
        # QWFA (Eq. 7), not QWFAF: E3 measured it best for templates, and QWFAF's fallback to the plain mean at
        # s_th hits exactly the most degraded enrolment sets (experiments/results/e3_templates).
        template = qwfa(features, qualities).astype(np.float32)
        return template, qualities.tolist()

    async def enroll(
        self,
        identity_id: str,
        display_name: str,
        source: TemplateSource,
        overwrite: bool,
        deadline: float | None,
        *,
        tenant: str = DEFAULT_TENANT,
    ) -> tuple[int, list[float]]:
        """Adds (or with ``overwrite`` replaces) an identity of ``tenant``; returns the tenant's gallery size and the
        image qualities."""
        keys = keys_of(tenant)
        check_id(identity_id, "identity_id")
        check_display_name(display_name)
        template, qualities = await self.template_from(source, tenant=tenant)
        record = IdentityRecord(keys.key(identity_id), display_name, template)
        if not await self.io(before_deadline(deadline, self.store.put_identity), record, overwrite):
            raise AlreadyExists(f"identity {identity_id!r} is already enrolled (set overwrite to replace it)")
        await self.refresh_gallery()
        return len(self.gallery.of(tenant)), qualities

    async def identify(
        self, source: TemplateSource, top_k: int, *, tenant: str = DEFAULT_TENANT
    ) -> tuple[list[Match], int]:
        """The best matches among ``tenant``'s identities, and that gallery's size."""
        k = self.resolve_top_k(top_k)
        template, _ = await self.template_from(source, tenant=tenant)
        await self.refresh_gallery()  # another replica may have enrolled since the last background refresh
        gallery = self.gallery.of(tenant)
        return gallery.search(template, k), len(gallery)

    async def remove_identity(self, identity_id: str, deadline: float | None, *, tenant: str = DEFAULT_TENANT) -> int:
        keys = keys_of(tenant)
        check_id(identity_id, "identity_id")
        if not await self.io(before_deadline(deadline, self.store.remove_identity), keys.key(identity_id)):
            raise NotFound(f"unknown identity {identity_id!r}")
        await self.refresh_gallery()
        return len(self.gallery.of(tenant))

    async def list_identities(
        self, requested_size: int, token: str, *, tenant: str = DEFAULT_TENANT
    ) -> tuple[list[IdentityRecord], str]:
        keys = keys_of(tenant)
        size, after = page_size(requested_size), decode_page_token(token)
        stored = await self.io(self.store.list_identities, keys.after(after), size + 1)
        ids = keys.page([r.identity_id for r in stored])  # zip: only the leading entries the tenant owns
        records = [IdentityRecord(i, r.display_name, r.template) for i, r in zip(ids, stored)]
        next_token = encode_page_token(records[size - 1].identity_id) if len(records) > size else ""
        return records[:size], next_token


def _cost(request: StreamRequest) -> tuple[int, int]:
    """A message's frames and accounted bytes (``eqface.service.limits`` states the arithmetic)."""
    return len(request.frames), 2 * request.nbytes + FRAME_OVERHEAD_BYTES * len(request.frames)


class _TenantSteps:
    """The service's per-message steps for one stream of one tenant (``flow.MessageSteps``): ``prepare`` scopes the
    frames' ids to the tenant's keys; the message carries them through the other steps."""

    def __init__(self, service: AggregatorService, keys: TenantKeys) -> None:
        self.service, self.keys = service, keys

    def prepare(self, request: StreamRequest) -> PreparedMessage:
        return self.service.prepare(request, self.keys)

    def needs_embedding(self, message: PreparedMessage) -> bool:
        return self.service.needs_embedding(message)

    async def embed(self, message: PreparedMessage) -> None:
        await self.service.embed(message)

    def submit(self, message: PreparedMessage, deadline: float | None, token: StreamToken) -> asyncio.Future:
        return self.service.submit(message, deadline, token)

    def finish(self, message: PreparedMessage, committed: CommittedBatch) -> MessageResult:
        return self.service.finish(message, committed)


@contextlib.contextmanager
def _ids_of(keys: TenantKeys, subject_id: str) -> Iterator[None]:
    """NotFound names the id the caller sent, never the store key."""
    try:
        yield
    except NotFound:
        raise NotFound(f"unknown subject {subject_id!r}") from None


def _decode_all(images: list[bytes], limits: ImageLimits, size: tuple[int, int] | None) -> list[Any]:
    """Per image: what Triton gets (the bytes, or with ``size`` a model-input tensor [3, H, W]) or the
    InvalidArgument error.

    Images are decoded here even when Triton decodes them again (bytes mode): a corrupt image is answered
    INVALID_ARGUMENT on its own frame instead of failing the Triton batch it would share with other streams.
    """
    out: list[Any] = []
    for data in images:
        try:
            rgb = decode_image(data, "image", limits)
        except ImageDecodeError as exc:
            out.append(InvalidArgument(str(exc)))
            continue
        out.append(data if size is None else contract.preprocess([rgb], size)[0])
    return out
