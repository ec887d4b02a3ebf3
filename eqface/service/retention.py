"""Retention: deletes subjects and gallery identities not written for longer than configured, through the store API
(so every backend gets it), at start and then periodically; each purge is audited and leaves no in-memory copy."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from eqface.service.audit import SYSTEM, AuditLog
from eqface.service.errors import ServiceError
from eqface.service.hygiene import DAY_S, RetentionConfig
from eqface.service.store import SubjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Purged:
    subjects: list[str]
    identities: list[str]


class RetentionSweeper:
    """Runs ``sweep()`` at ``start()`` and every ``config.interval_s`` until ``stop()``.

    Args:
        io: runs a blocking store call off the event loop (the service's store thread).
        forget: drops purged records from memory (cache, gallery, activity); awaited after every batch.
        clock: Unix seconds (the stores stamp writes with ``time.time()``).
    """

    def __init__(
        self,
        config: RetentionConfig,
        store: SubjectStore,
        io: Callable[..., Awaitable],
        audit: AuditLog,
        forget: Callable[[Purged], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self._io = io
        self._audit = audit
        self._forget = forget
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.config.enabled:
            return
        await self._sweep_or_warn()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="eqface-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def sweep(self) -> Purged:
        """Deletes everything expired now, batch by batch; returns what was deleted."""
        now, config = self._clock(), self.config
        subjects = await self._purge("subjects", self.store.purge_subjects, config.subject_days, now)
        identities = await self._purge("identities", self.store.purge_identities, config.identity_days, now)
        if subjects or identities:
            log.info("retention deleted %d subjects and %d identities", len(subjects), len(identities))
        return Purged(subjects, identities)

    async def _purge(self, kind: str, purge: Callable[[float, int], list[str]], days: float | None, now: float):
        if days is None:
            return []
        cutoff, deleted = now - days * DAY_S, []
        while True:
            batch = await self._io(purge, cutoff, self.config.batch_size)
            if batch:
                deleted += batch
                purged = Purged(batch, []) if kind == "subjects" else Purged([], batch)
                await self._forget(purged)
                self._audit.record(SYSTEM, f"retention_purge_{kind}", kind, "OK", ids=batch, older_than_days=days)
            if len(batch) < self.config.batch_size:
                return deleted

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            await self._sweep_or_warn()

    async def _sweep_or_warn(self) -> None:
        try:
            await self.sweep()
        except ServiceError as exc:  # the store is down: the next sweep retries
            log.warning("retention sweep failed: %s", exc)
