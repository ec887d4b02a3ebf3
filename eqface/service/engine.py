"""Durable, ordered application of frames: the subject engine (blocking, one thread) and the group committer.

The committer queues batches of validated frames from every stream and hands them to the engine a group at a time:
one store transaction per group (group commit), futures resolved only after it is durable. The engine runs in a
single dedicated thread, so frames of one subject are applied in submission order within a process; the store's
version check extends that to several processes sharing one store (the loser of a race re-reads and re-applies).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from eqface.service.aggregator import FrameInput, FrameOutcome, FrameStatus, apply_frame
from eqface.service.cache import LruCache
from eqface.service.errors import Aborted, DeadlineExceeded, Internal, NotFound, ServiceError, Unavailable
from eqface.service.state import AggregationParams, SubjectRecord, decode_record, encode_record, reset_record
from eqface.service.store import StoreUnavailable, SubjectStore, SubjectWrite

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_CONFLICT_RETRIES = 8


class EngineMetrics(Protocol):
    def observe_stage(self, stage: str, seconds: float) -> None: ...

    def observe_group(self, frames: int) -> None: ...


class _NoMetrics:
    def observe_stage(self, stage: str, seconds: float) -> None:
        pass

    def observe_group(self, frames: int) -> None:
        pass


@dataclass(eq=False)
class StreamToken:
    """Shared by the batches of one stream: once it fails or ends, its queued batches are not applied."""

    failed: bool = False


@dataclass(frozen=True, slots=True)
class CommittedBatch:
    """A durable batch: one outcome per frame and, if asked for, each subject's template after the batch."""

    outcomes: list[FrameOutcome]
    templates: dict[str, np.ndarray]


@dataclass(eq=False)
class PendingBatch:
    frames: Sequence[FrameInput]
    deadline: float | None  # time.monotonic() value; None = no deadline
    token: StreamToken | None
    future: asyncio.Future[CommittedBatch] = field(repr=False)
    want_templates: bool = False


BatchResult = CommittedBatch | ServiceError


class SubjectEngine:
    """Applies frames to subject records, read through an LRU cache and written with optimistic version checks."""

    def __init__(
        self,
        store: SubjectStore,
        params: AggregationParams,
        cache_subjects: int,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.store = store
        self.params = params
        self.cache: LruCache[str, SubjectRecord] = LruCache(cache_subjects)
        self._metrics = metrics or _NoMetrics()

    def apply(self, batches: Sequence[PendingBatch]) -> list[BatchResult]:
        """One group commit. Store failures raise StoreUnavailable (nothing of the group is acknowledged)."""
        results: list[BatchResult] = []
        now = time.monotonic()
        order: dict[str, list[tuple[int, int]]] = {}  # subject -> (batch, frame) positions, in submission order
        for b, batch in enumerate(batches):
            if batch.token is not None and batch.token.failed:
                results.append(Aborted("an earlier message of this stream failed; these frames were not applied"))
            elif batch.deadline is not None and now > batch.deadline:
                results.append(DeadlineExceeded("the call's deadline passed before its frames were applied"))
            else:
                results.append(CommittedBatch([None] * len(batch.frames), {}))  # type: ignore[list-item]
                for f, frame in enumerate(batch.frames):
                    order.setdefault(frame.subject_id, []).append((b, f))
        aborted = self._apply_subjects(batches, order, results)  # type: ignore[arg-type]
        for b in {b for sid in aborted for b, _ in order[sid]}:
            results[b] = Aborted("concurrent writers kept updating the same subject; resend (duplicates are skipped)")
        return results

    def _apply_subjects(
        self,
        batches: Sequence[PendingBatch],
        order: dict[str, list[tuple[int, int]]],
        results: list[CommittedBatch],
    ) -> set[str]:
        pending = set(order)
        fresh = False
        for _ in range(MAX_CONFLICT_RETRIES):
            records = self._checkout(pending, from_store=fresh)
            started = time.perf_counter()
            writes = []
            for sid in pending:
                record = records[sid]
                changed = False
                positions = order[sid]
                for i, (b, f) in enumerate(positions):
                    outcome = apply_frame(record, batches[b].frames[f])
                    results[b].outcomes[f] = outcome
                    changed |= outcome.status is not FrameStatus.DUPLICATE and outcome.status is not FrameStatus.INVALID
                    last_of_batch = i + 1 == len(positions) or positions[i + 1][0] != b
                    if last_of_batch and batches[b].want_templates and record.aggregate.weighted_mean is not None:
                        results[b].templates[sid] = record.aggregate.template
                if changed:
                    writes.append(SubjectWrite(sid, record.version, encode_record(record)))
            stored = time.perf_counter()
            self._metrics.observe_stage("update", stored - started)
            committed = self.store.commit_subjects(writes)
            self._metrics.observe_stage("store", time.perf_counter() - stored)
            for sid in pending - committed.conflicts:
                record = records[sid]
                record.version = committed.versions.get(sid, record.version)
                self.cache.put(sid, record)
            if not committed.conflicts:
                return set()
            self.cache.discard(committed.conflicts)
            pending, fresh = set(committed.conflicts), True
            log.debug("version conflict on %d subjects; re-reading them", len(pending))
        return pending

    def _checkout(self, subject_ids: set[str], from_store: bool) -> dict[str, SubjectRecord]:
        """Working copies: cached records cloned, the others read from the store, unknown subjects new."""
        records: dict[str, SubjectRecord] = {}
        missing = []
        for sid in subject_ids:
            cached = None if from_store else self.cache.get(sid)
            if cached is None:
                missing.append(sid)
            else:
                records[sid] = cached.clone()
        if missing:
            started = time.perf_counter()
            loaded = self.store.load_subjects(missing)
            self._metrics.observe_stage("store", time.perf_counter() - started)
            for sid in missing:
                blob = loaded.get(sid)
                if blob is None:
                    records[sid] = SubjectRecord(sid, self.params.new_aggregate())
                else:
                    records[sid] = self._decode(sid, blob.data, blob.version)
        return records

    def _decode(self, subject_id: str, data: bytes, version: int) -> SubjectRecord:
        try:
            return decode_record(subject_id, data, version, self.params)
        except ValueError as exc:
            raise Internal(f"stored state of subject {subject_id!r} is unreadable: {exc}") from exc

    def read(self, subject_id: str) -> SubjectRecord:
        """The subject as stored now (not the cache: another replica may have updated it)."""
        blob = self.store.load_subjects([subject_id]).get(subject_id)
        if blob is None:
            raise NotFound(f"unknown subject {subject_id!r}")
        return self._decode(subject_id, blob.data, blob.version)

    def reset(self, subject_id: str) -> SubjectRecord:
        for _ in range(MAX_CONFLICT_RETRIES):
            record = reset_record(self.read(subject_id), self.params)
            committed = self.store.commit_subjects([SubjectWrite(subject_id, record.version, encode_record(record))])
            if not committed.conflicts:
                record.version = committed.versions[subject_id]
                self.cache.put(subject_id, record)
                return record.clone()
        raise Aborted(f"subject {subject_id!r} kept changing during the reset; retry")

    def delete(self, subject_id: str) -> None:
        self.cache.discard([subject_id])
        if not self.store.delete_subject(subject_id):
            raise NotFound(f"unknown subject {subject_id!r}")


class GroupCommitter:
    """Queues frame batches from all streams and commits them in groups on the engine's thread."""

    def __init__(self, engine: SubjectEngine, max_group_frames: int, metrics: EngineMetrics | None = None) -> None:
        self.engine = engine
        self.max_group_frames = max_group_frames
        self._metrics = metrics or _NoMetrics()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eqface-store")
        self._queue: asyncio.Queue[PendingBatch | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="eqface-group-commit")

    async def stop(self) -> None:
        """Commits everything queued so far, then stops the worker and the store thread."""
        self._closing = True
        if self._worker is not None:
            await self._queue.put(None)
            await self._worker
            self._worker = None
        while not self._queue.empty():  # only a stop sentinel can be left, but fail anything rather than hang it
            item = self._queue.get_nowait()
            if item is not None and not item.future.done():
                item.future.set_exception(Unavailable("the server is shutting down"))
        self._executor.shutdown(wait=True)

    def submit(
        self,
        frames: Sequence[FrameInput],
        deadline: float | None,
        token: StreamToken | None,
        want_templates: bool = False,
    ) -> asyncio.Future[CommittedBatch]:
        """Queues frames for the next group commit; the future resolves once they are durable."""
        future: asyncio.Future[CommittedBatch] = asyncio.get_running_loop().create_future()
        if self._worker is None or self._closing:
            future.set_exception(Unavailable("the server is shutting down"))
        else:
            self._queue.put_nowait(PendingBatch(frames, deadline, token, future, want_templates))
        return future

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Runs a blocking store or engine call on the store thread (serialised with the commits)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except StoreUnavailable as exc:
            raise Unavailable(str(exc)) from exc

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            group, frames = [first], len(first.frames)
            while frames < self.max_group_frames and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                group.append(item)
                frames += len(item.frames)
            self._metrics.observe_group(frames)
            try:
                results = await loop.run_in_executor(self._executor, self.engine.apply, group)
            except StoreUnavailable as exc:
                log.warning("store unavailable: %s", exc)
                results = [Unavailable(f"store unavailable: {exc}")] * len(group)
            except ServiceError as exc:
                results = [exc] * len(group)
            except Exception as exc:  # a bug must fail the frames, not the committer that every stream needs
                log.exception("group commit failed")
                results = [Internal(f"commit failed: {type(exc).__name__}: {exc}")] * len(group)
            for batch, result in zip(group, results):
                if isinstance(result, ServiceError):
                    if batch.token is not None:
                        batch.token.failed = True
                    if not batch.future.done():
                        batch.future.set_exception(result)
                elif not batch.future.done():
                    batch.future.set_result(result)
