"""Flow control of one frame stream: read ahead within a window, embed concurrently, commit and answer in order.

Transport-independent (plain asyncio): the gRPC servicer hands it an async iterator of domain requests and sends what
it yields. Per message, the steps of ``MessageSteps`` run like this:

- **read** at most ``window`` messages ahead of their answer (back-pressure: a client that does not read its answers,
  or a slow store, stops the stream being read); ``prepare`` validates each message as it is read;
- **embed** (Triton) the messages that need it concurrently, so the inference of consecutive messages overlaps;
- **submit** every message to the group committer in the order it was read, and once a message fails (Triton or the
  store unavailable, deadline passed) nothing later of the stream is applied: the client resends from its first
  unanswered frame and the sequence numbers turn anything applied twice into a duplicate;
- **answer** in the order read, each message once it is durable.

The stream ends cleanly when the requests end, or with a ``ServiceError`` (raised by ``__anext__`` after every earlier
message was answered) when a message fails, the transport fails, or ``stop`` is set (drain on shutdown: the stream
stops reading, answers what it read, then ends with ``Unavailable``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from eqface.service.engine import StreamToken
from eqface.service.errors import Aborted, DeadlineExceeded, Internal, ServiceError, Unavailable
from eqface.service.quota import StreamQuota

log = logging.getLogger(__name__)
Req = TypeVar("Req", contravariant=True)
Msg = TypeVar("Msg")
Done = TypeVar("Done")
Res = TypeVar("Res", covariant=True)
R = TypeVar("R")
M = TypeVar("M")
D = TypeVar("D")
Q = TypeVar("Q")


class MessageSteps(Protocol[Req, Msg, Done, Res]):
    """The work on one message; ``StreamFlow`` decides when each step runs (``AggregatorService`` implements it)."""

    def prepare(self, request: Req) -> Msg:
        """Validates a message as it is read; a ``ServiceError`` ends the stream after the earlier answers."""
        ...

    def needs_embedding(self, message: Msg) -> bool:
        """Whether ``embed`` has work to do before the message can be submitted."""
        ...

    async def embed(self, message: Msg) -> None:
        """Slow work that may overlap other messages' (Triton inference); raising ends the stream."""
        ...

    def submit(self, message: Msg, deadline: float | None, token: StreamToken) -> Awaitable[Done]:
        """Queues the message for its durable commit; called in message order."""
        ...

    def finish(self, message: Msg, done: Done) -> Res:
        """The answer to a committed message."""
        ...


@dataclass(frozen=True, slots=True)
class _Pending(Generic[M, D]):
    message: M
    done: Awaitable[D]
    cost: tuple[int, int] = (0, 0)  # frames, accounted bytes (released once answered)


@dataclass(frozen=True, slots=True)
class _End:
    error: ServiceError | None = None


SHUTTING_DOWN = "the server is shutting down; reconnect and resend"
IDLE = "the stream sent no message for {:g} s; the server closed it to free its slot (reconnect to send more)"


class StreamFlow(Generic[Q, M, D, R]):
    """One stream's answers, in order: ``async for answer in flow``; call ``close()`` when the stream ends.

    Args:
        steps: the per-message work.
        requests: the stream's messages, already in domain types.
        window: most messages read and not yet answered.
        deadline: the call's deadline (``time.monotonic()``), passed to ``submit``; None for none.
        stop: once set, no further message is read (drain); the stream ends ``Unavailable`` after its answers.
        quota: the stream's admission (``eqface.service.quota``): the reader waits for its room before reading a
            message and admits each message it reads (a refusal ends the stream); None for no limits.
        cost: (frames, accounted bytes) of a request; needed with ``quota``.
        idle_timeout_s: a stream that sends no message for this long ends ``DeadlineExceeded``; None: never.
    """

    def __init__(
        self,
        steps: MessageSteps[Q, M, D, R],
        requests: AsyncIterator[Q],
        window: int,
        deadline: float | None = None,
        stop: asyncio.Event | None = None,
        quota: StreamQuota | None = None,
        cost: Callable[[Q], tuple[int, int]] | None = None,
        idle_timeout_s: float | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.steps = steps
        self.deadline = deadline
        self.token = StreamToken()  # shared with the committer: once failed, queued messages are not applied
        self._requests = requests
        self._stop = stop or asyncio.Event()
        self._window = asyncio.Semaphore(window)
        self._answers: asyncio.Queue[_Pending[M, D] | _End] = asyncio.Queue()  # the window bounds it
        self._reader: asyncio.Task[None] | None = None
        self._tail: asyncio.Future[None] | None = None  # done once the last embedding message was submitted
        self._tasks: set[asyncio.Task[D]] = set()
        self._ended = False
        self._quota = quota
        self._cost = cost or (lambda request: (0, 0))
        self._idle_timeout_s = idle_timeout_s

    def __aiter__(self) -> StreamFlow[Q, M, D, R]:
        return self

    async def __anext__(self) -> R:
        if self._ended:
            raise StopAsyncIteration
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read(), name="eqface-stream-reader")
        item = await self._answers.get()
        if isinstance(item, _End):
            self._ended = True
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        try:
            answer = self.steps.finish(item.message, await item.done)
        except ServiceError:
            self._ended = True
            raise
        except Exception as exc:
            self._ended = True
            log.exception("processing a stream message failed")
            raise Internal("processing the message failed; see the server log") from exc
        self._window.release()  # the answer left flow control: one more message may be read
        if self._quota is not None:
            self._quota.release(*item.cost)
        return answer

    def close(self) -> None:
        """Nothing of this stream is read or applied after this (the call ended or failed)."""
        self._ended = True
        self.token.failed = True
        if self._reader is not None:
            self._reader.cancel()
        for task in self._tasks:
            task.cancel()
        while not self._answers.empty():  # nothing will await these any more
            item = self._answers.get_nowait()
            if isinstance(item, _Pending) and isinstance(item.done, asyncio.Future):
                item.done.cancel()
        if self._quota is not None:
            self._quota.close()  # releases whatever is still held

    async def __aenter__(self) -> StreamFlow[Q, M, D, R]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------- reading
    async def _read(self) -> None:
        stopping = asyncio.ensure_future(self._stop.wait())
        next_request: asyncio.Future[Q] | None = None
        try:
            while True:
                await self._window.acquire()
                if self._quota is not None:
                    await self._quota.wait_room()
                next_request = asyncio.ensure_future(anext(self._requests))
                await asyncio.wait(
                    (next_request, stopping), timeout=self._idle_timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
                if not next_request.done():
                    next_request.cancel()
                    if stopping.done():
                        return self._end(Unavailable(SHUTTING_DOWN))
                    return self._end(DeadlineExceeded(IDLE.format(self._idle_timeout_s)))
                try:
                    request = next_request.result()
                except StopAsyncIteration:
                    return self._end(None)
                except ServiceError as exc:  # a message that does not decode: INVALID_ARGUMENT, not a transport error
                    return self._end(exc)
                except Exception as exc:  # the transport failed or the client went away
                    log.debug("stream read ended: %r", exc)
                    return self._end(Unavailable(f"reading the stream failed: {exc}"))
                try:
                    cost = self._cost(request)
                    if self._quota is not None:
                        self._quota.admit(*cost)
                    message = self.steps.prepare(request)
                    done = self._start(message)
                except ServiceError as exc:
                    return self._end(exc)
                except Exception as exc:
                    log.exception("preparing a stream message failed")
                    return self._end(Internal(f"preparing the message failed: {exc}"))
                self._answers.put_nowait(_Pending(message, done, cost))
        finally:
            stopping.cancel()
            if next_request is not None:
                if next_request.done() and not next_request.cancelled():
                    next_request.exception()  # retrieved: the call ended while the read was completing
                else:
                    next_request.cancel()

    def _end(self, error: ServiceError | None) -> None:
        self._answers.put_nowait(_End(error))

    # ------------------------------------------------------------------------------------------------ ordering
    def _start(self, message: M) -> Awaitable[D]:
        """Starts one message; its awaitable (awaited in read order) resolves once it is durable."""
        embedding = self.steps.needs_embedding(message)
        if not embedding and (self._tail is None or self._tail.done()):
            return self.steps.submit(message, self.deadline, self.token)  # hot path: nothing to wait for
        loop = asyncio.get_running_loop()
        submitted: asyncio.Future[None] = loop.create_future()
        task = loop.create_task(self._embed_then_submit(message, embedding, self._tail, submitted))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._tail = submitted
        return task

    async def _embed_then_submit(
        self, message: M, embedding: bool, previous: asyncio.Future[None] | None, submitted: asyncio.Future[None]
    ) -> D:
        try:
            try:
                if embedding:
                    await self.steps.embed(message)
            except BaseException:
                self.token.failed = True  # set before `submitted`: later messages must see it
                raise
            if previous is not None:
                await previous
            if self.token.failed:
                raise Aborted("an earlier message of this stream failed; these frames were not applied")
            done = self.steps.submit(message, self.deadline, self.token)
        finally:
            if not submitted.done():
                submitted.set_result(None)
        return await done
