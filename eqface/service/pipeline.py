"""One stream's ordered pipeline: validate → (decode + Triton) → group commit → answer, pipelined but in order.

Messages are read ahead (up to ``max_inflight_messages``) so that Triton calls and commits of consecutive messages
overlap, but frames reach the committer in the order they were sent, and once a message fails (Triton or the store
unavailable, deadline passed) no later message of the stream is applied: the client resends from the first
unanswered frame and the sequence numbers turn anything applied twice into a duplicate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from eqface.service.engine import CommittedBatch, StreamToken
from eqface.service.errors import Aborted
from eqface.service.inputs import RawFrame
from eqface.service.service import AggregatorService, MessageResult, PreparedMessage


class StreamPipeline:
    def __init__(self, service: AggregatorService, deadline: float | None) -> None:
        self.service = service
        self.deadline = deadline
        self.token = StreamToken()
        self._tail: asyncio.Future[None] | None = None  # done once the last queued message reached the committer
        self._tasks: set[asyncio.Task[CommittedBatch]] = set()

    def push(self, frames: list[RawFrame]) -> tuple[PreparedMessage, Awaitable[CommittedBatch]]:
        """Starts one message; await the returned awaitable (in push order) for its durable outcomes."""
        message = self.service.prepare(frames)
        if not message.images and (self._tail is None or self._tail.done()):
            return message, self.service.submit(message, self.deadline, self.token)  # hot path: features only
        submitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.get_running_loop().create_task(self._after(message, self._tail, submitted))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._tail = submitted
        return message, task

    async def _after(
        self, message: PreparedMessage, previous: asyncio.Future[None] | None, submitted: asyncio.Future[None]
    ) -> CommittedBatch:
        try:
            try:
                await self.service.embed_images(message)
            except BaseException:
                self.token.failed = True  # set before `submitted`: later messages must see it
                raise
            if previous is not None:
                await previous
            if self.token.failed:
                raise Aborted("an earlier message of this stream failed; these frames were not applied")
            future = self.service.submit(message, self.deadline, self.token)
        finally:
            if not submitted.done():
                submitted.set_result(None)
        return await future

    def finish(self, message: PreparedMessage, committed: CommittedBatch, top_k: int) -> MessageResult:
        return self.service.finish(message, committed, top_k)

    def close(self) -> None:
        """Nothing queued by this stream is applied after this (the call ended or failed)."""
        self.token.failed = True
        for task in self._tasks:
            task.cancel()
