"""Durable, ordered application of frames: the store thread, the subject engine and the group committer.

The committer queues batches of validated frames from every stream and hands them to the engine a group at a time:
one store transaction per group (group commit), futures resolved only after it is durable. Frames of one subject are
applied in submission order within a process; the store's version check extends that to several processes sharing
one store (the loser of a race re-reads and re-applies).

Threads: the QWFA arithmetic and the cache live on the event loop's thread; only blocking store calls go to the one
store thread. Running the numpy work on the store thread instead made the two threads fight over the GIL (every numpy
call that releases it could wait a whole switch interval, 5 ms, to get it back): it cost throughput and tail latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from eqface.service.aggregator import FrameInput, FrameOutcome, FrameStatus, apply_frame
from eqface.service.cache import LruCache
from eqface.service.errors import Aborted, DeadlineExceeded, Internal, NotFound, ServiceError, Unavailable
from eqface.service.state import AggregationParams, SubjectRecord, decode_record, encode_record, reset_record
from eqface.service.store import CommitResult, StoreUnavailable, SubjectStore, SubjectWrite

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_CONFLICT_RETRIES = 8
COMPUTE_SLICE_S = 0.005  # longest stretch of QWFA arithmetic on the event loop before it yields


class EngineMetrics(Protocol):
    def observe_stage(self, stage: str, seconds: float) -> None: ...

    def observe_group(self, frames: int) -> None: ...


class _NoMetrics:
    def observe_stage(self, stage: str, seconds: float) -> None:
        pass

    def observe_group(self, frames: int) -> None:
        pass


class StoreThread:
    """The single thread every blocking store call runs on, in call order (one SQLite connection, one Redis client)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eqface-store")

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except StoreUnavailable as exc:
            raise Unavailable(f"store unavailable: {exc}") from exc

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


def before_deadline(deadline: float | None, fn: Callable[..., T]) -> Callable[..., T]:
    """Wraps a blocking write so that it is skipped, not applied, once the call's deadline has passed.

    The check runs on the store thread immediately before the write, after any wait in the store thread's queue.
    """

    def guarded(*args: Any) -> T:
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded("the call's deadline passed before the change was applied")
        return fn(*args)

    return guarded


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
    """Applies frames to subject records, read through an LRU cache and written with optimistic version checks.

    Call it from the event loop's thread only (the cache is not locked); ``io`` runs the store calls.
    """

    def __init__(
        self,
        store: SubjectStore,
        params: AggregationParams,
        cache_subjects: int,
        io: StoreThread,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.store = store
        self.params = params
        self.cache: LruCache[str, SubjectRecord] = LruCache(cache_subjects)
        self.io = io
        self._metrics = metrics or _NoMetrics()

    async def apply(self, batches: Sequence[PendingBatch]) -> list[BatchResult]:
        """One group commit. A store failure raises Unavailable: nothing of the group is acknowledged.

        A batch whose call ended (deadline passed, stream failed or cancelled) before the group's transaction starts
        on the store thread is not applied: the group is recomputed without it. Retries after a version conflict
        (another replica) no longer drop batches, since part of the group is committed by then.
        """
        results: list[BatchResult] = [CommittedBatch([None] * len(b.frames), {}) for b in batches]  # type: ignore
        live = [b for b in range(len(batches)) if not self._ended(batches[b], results, b, time.monotonic())]
        while True:
            if not live:
                return results
            order = _positions(batches, live)
            pending = set(order)
            records = await self._checkout(pending, from_store=False)
            writes = await self._compute(batches, order, pending, records, results)  # type: ignore[arg-type]
            started = time.perf_counter()
            committed = await self.io(self._commit_if_live, writes, batches, live, results)
            self._metrics.observe_stage("store", time.perf_counter() - started)
            if committed is not None:
                break
            live = [b for b in live if isinstance(results[b], CommittedBatch)]  # some ended while queued: redo
        self._settle(records, pending, committed)
        for _ in range(MAX_CONFLICT_RETRIES):
            if not committed.conflicts:
                return results
            pending = set(committed.conflicts)
            log.debug("version conflict on %d subjects; re-reading them", len(pending))
            records = await self._checkout(pending, from_store=True)
            writes = await self._compute(batches, order, pending, records, results)  # type: ignore[arg-type]
            committed = await self.io(self.store.commit_subjects, writes)
            self._settle(records, pending, committed)
        for b in {b for sid in committed.conflicts for b, _ in order[sid]}:
            results[b] = Aborted("concurrent writers kept updating the same subject; resend (duplicates are skipped)")
        return results

    @staticmethod
    def _ended(batch: PendingBatch, results: list[BatchResult], b: int, now: float) -> bool:
        if batch.token is not None and batch.token.failed:
            results[b] = Aborted("an earlier message of this stream failed or the call ended; not applied")
        elif batch.deadline is not None and now > batch.deadline:
            results[b] = DeadlineExceeded("the call's deadline passed before its frames were applied")
        else:
            return False
        return True

    def _commit_if_live(
        self, writes: list[SubjectWrite], batches: Sequence[PendingBatch], live: list[int], results: list[BatchResult]
    ) -> CommitResult | None:
        """On the store thread, right before the transaction: None (nothing written) if a batch's call has ended."""
        now = time.monotonic()
        if any([self._ended(batches[b], results, b, now) for b in live]):
            return None
        return self.store.commit_subjects(writes)

    async def _compute(
        self,
        batches: Sequence[PendingBatch],
        order: dict[str, list[tuple[int, int]]],
        pending: set[str],
        records: dict[str, SubjectRecord],
        results: list[CommittedBatch],
    ) -> list[SubjectWrite]:
        """Progressive QWFA over the working copies, frame by frame in order; the writes for changed subjects.

        Yields to the event loop every ``COMPUTE_SLICE_S`` of work: a 2,048-frame group is ~50 ms of arithmetic, and
        while it runs nothing else does — new calls are not accepted (gRPC accepts one call per loop iteration),
        first messages are not read. Safe: the group works on cloned records, published only by ``_settle``.
        """
        busy = 0.0
        sliced = time.perf_counter()
        writes = []
        for sid in pending:
            record = records[sid]
            self.params.gate(record.aggregate)  # cached records may predate a threshold change
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
            elapsed = time.perf_counter() - sliced
            if elapsed >= COMPUTE_SLICE_S:
                busy += elapsed
                await asyncio.sleep(0)
                sliced = time.perf_counter()
        self._metrics.observe_stage("update", busy + time.perf_counter() - sliced)
        return writes

    def _settle(self, records: dict[str, SubjectRecord], pending: set[str], committed: CommitResult) -> None:
        for sid in pending - committed.conflicts:
            record = records[sid]
            record.version = committed.versions.get(sid, record.version)
            self.cache.put(sid, record)
        self.cache.discard(committed.conflicts)

    async def _checkout(self, subject_ids: set[str], from_store: bool) -> dict[str, SubjectRecord]:
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
            loaded = await self.io(self.store.load_subjects, missing)
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

    async def read(self, subject_id: str) -> SubjectRecord:
        """The subject as stored now (not the cache: another replica may have updated it)."""
        blob = (await self.io(self.store.load_subjects, [subject_id])).get(subject_id)
        if blob is None:
            raise NotFound(f"unknown subject {subject_id!r}")
        return self._decode(subject_id, blob.data, blob.version)

    async def reset(self, subject_id: str, deadline: float | None = None) -> SubjectRecord:
        """A fresh aggregate and sequence 0; version-checked like any update."""
        for _ in range(MAX_CONFLICT_RETRIES):
            record = reset_record(await self.read(subject_id), self.params)
            write = SubjectWrite(subject_id, record.version, encode_record(record))
            committed = await self.io(before_deadline(deadline, self.store.commit_subjects), [write])
            if not committed.conflicts:
                record.version = committed.versions[subject_id]
                self.cache.put(subject_id, record)
                return record.clone()
        raise Aborted(f"subject {subject_id!r} kept changing during the reset; retry")

    async def delete(self, subject_id: str, deadline: float | None = None) -> None:
        self.cache.discard([subject_id])  # a stale copy elsewhere fails its version check against the deletion
        if not await self.io(before_deadline(deadline, self.store.delete_subject), subject_id):
            raise NotFound(f"unknown subject {subject_id!r}")


def _positions(batches: Sequence[PendingBatch], live: list[int]) -> dict[str, list[tuple[int, int]]]:
    """Subject -> its (batch, frame) positions among the live batches, in submission order."""
    order: dict[str, list[tuple[int, int]]] = {}
    for b in live:
        for f, frame in enumerate(batches[b].frames):
            order.setdefault(frame.subject_id, []).append((b, f))
    return order


class GroupCommitter:
    """Queues frame batches from all streams and commits them in groups, one group at a time.

    Fair: each stream (``StreamToken``) has its own queue and a group takes one batch from each stream in turn
    (round robin, streams in the order they last got a turn) until ``max_group_frames``. A stream that just
    started therefore waits for at most one batch of every other stream with work queued — about
    ``streams × frames per message / max_group_frames`` groups — not for everything the earlier streams read ahead
    (first-in-first-out made a reconnect storm's last streams wait for all the others' windows, up to 20 s).
    """

    def __init__(self, engine: SubjectEngine, max_group_frames: int, metrics: EngineMetrics | None = None) -> None:
        self.engine = engine
        self.max_group_frames = max_group_frames
        self._metrics = metrics or _NoMetrics()
        self._queues: OrderedDict[object, deque[PendingBatch]] = OrderedDict()  # stream -> its batches, turn order
        self._work = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="eqface-group-commit")

    async def stop(self) -> None:
        """Commits everything queued so far, then stops."""
        self._closing = True
        self._work.set()
        if self._worker is not None:
            await self._worker
            self._worker = None
        for queue in self._queues.values():  # nothing is left after the worker, but fail anything rather than hang it
            for item in queue:
                if not item.future.done():
                    item.future.set_exception(Unavailable("the server is shutting down"))
        self._queues.clear()

    def submit(
        self,
        frames: Sequence[FrameInput],
        deadline: float | None,
        token: StreamToken | None,
        want_templates: bool = False,
    ) -> asyncio.Future[CommittedBatch]:
        """Queues frames for a later group commit; the future resolves once they are durable."""
        future: asyncio.Future[CommittedBatch] = asyncio.get_running_loop().create_future()
        if self._worker is None or self._closing:
            future.set_exception(Unavailable("the server is shutting down"))
            return future
        batch = PendingBatch(frames, deadline, token, future, want_templates)
        key = batch if token is None else token
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()  # a new stream takes its turn after the streams already waiting
        queue.append(batch)
        self._work.set()
        return future

    def next_group(self) -> list[PendingBatch]:
        """The next group: one batch per stream in turn order, repeated, until ``max_group_frames`` (a first batch
        larger than that goes alone). Each stream that gave a batch moves to the end of the turn order."""
        group: list[PendingBatch] = []
        frames = 0
        queues = self._queues
        while queues:
            key, queue = next(iter(queues.items()))
            if group and frames + len(queue[0].frames) > self.max_group_frames:
                break
            batch = queue.popleft()
            group.append(batch)
            frames += len(batch.frames)
            del queues[key]
            if queue:
                queues[key] = queue
        return group

    async def _run(self) -> None:
        while True:
            if not self._queues:
                if self._closing:
                    return
                self._work.clear()
                await self._work.wait()
                continue
            group = self.next_group()
            self._metrics.observe_group(sum(len(b.frames) for b in group))
            await self._commit(group)

    async def _commit(self, group: list[PendingBatch]) -> None:
        try:
            results = await self.engine.apply(group)
        except ServiceError as exc:
            if isinstance(exc, Unavailable):
                log.warning("%s", exc)
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
