"""The client's side of ``AggregatorService.StreamFrames``: a bounded window of unanswered frames, a drop policy for
when the aggregator cannot keep up, and reconnects that lose nothing.

- **Window.** At most ``window`` frames are sent and unanswered; the rest wait in a queue of ``capacity`` frames.
  Frames go out in messages of up to ``batch`` frames (per-message cost dominates on the service). With
  ``linger_s`` > 0 a message waits until ``batch`` frames are queued or its oldest frame has waited ``linger_s``
  (a camera producing one face a frame then sends several per message: one Triton request and one store commit for
  them, not one each); ``flush`` and ``close`` send at once.
- **Full queue.** ``block=True`` (a file: nothing needs dropping) makes ``submit`` wait; ``block=False`` (a live
  camera: waiting would only make every later frame stale) drops the queued frame with the lowest client-side
  quality proxy (``eqface.camera.proxy``), the new frame included. A frame that was sent once is never dropped.
- **Reconnects.** When the call breaks (the aggregator restarts, the network drops), every unanswered frame goes back
  to the front of the queue, in order, and is sent again on a new call with the same (subject, sequence): the service
  answers frames it had already applied DUPLICATE, so each frame counts exactly once. Retries back off from 0.2 s to
  2 s and give up after ``reconnect_timeout_s`` without an answer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from eqface.service.client import AggregatorClient, ClientAuth, image_frame, is_retryable
from eqface.service.v1 import aggregator_pb2 as pb


@dataclass
class OutgoingFrame:
    subject_id: str
    sequence: int
    image: bytes
    proxy: float
    tag: Any = None  # the caller's own reference (track, frame index)
    sent: bool = False
    queued_at: float = 0.0  # time.monotonic() when submitted


@dataclass(frozen=True)
class Answer:
    frame: OutgoingFrame
    result: Any  # eqface.service.v1 FrameResult
    matches: list  # the subject's gallery matches after this message (best first), possibly empty


@dataclass
class UplinkStats:
    submitted: int = 0
    sent: int = 0
    messages: int = 0  # StreamFramesRequest messages the sent frames went out in
    answered: int = 0
    dropped: int = 0
    resent: int = 0
    reconnects: int = 0
    duplicates: int = 0
    events: list[str] = field(default_factory=list)


class UplinkError(RuntimeError):
    """The aggregator could not be reached (or refused the stream) for longer than the reconnect timeout."""


class Uplink:
    def __init__(
        self,
        target: str,
        *,
        window: int = 64,
        capacity: int = 256,
        batch: int = 16,
        block: bool = True,
        top_k: int = 3,
        reconnect_timeout_s: float = 60.0,
        linger_s: float = 0.0,
        auth: ClientAuth | None = None,
    ) -> None:
        if window < 1 or capacity < 1 or batch < 1:
            raise ValueError("window, capacity and batch must be at least 1")
        if linger_s < 0:
            raise ValueError(f"linger_s must be >= 0, got {linger_s}")
        self.linger_s = linger_s
        self._flushing = 0  # callers waiting in flush(): queued frames go out without lingering
        self.target = target
        self.window, self.capacity, self.batch, self.block, self.top_k = window, capacity, batch, block, top_k
        self.reconnect_timeout_s = reconnect_timeout_s
        self.auth = auth
        self.answers: queue.Queue[Answer | str] = queue.Queue()  # answers, and one line per connection event
        self.stats = UplinkStats()
        self._cond = threading.Condition()
        self._pending: deque[OutgoingFrame] = deque()
        self._in_flight: deque[list[OutgoingFrame]] = deque()
        self._generation = 0
        self._closing = False
        self._error: UplinkError | None = None
        self._client: AggregatorClient | None = None
        self._call = None
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)

    # ------------------------------------------------------------------------------------------ caller side
    def start(self) -> Uplink:
        self._client = AggregatorClient(self.target, auth=self.auth, reconnect_timeout_s=self.reconnect_timeout_s)
        self._thread.start()
        return self

    def submit(self, frame: OutgoingFrame) -> list[OutgoingFrame]:
        """Queues ``frame``; returns the frames dropped to make room (possibly ``frame`` itself)."""
        with self._cond:
            self._raise_if_failed()
            self.stats.submitted += 1
            frame.queued_at = time.monotonic()
            if self.block:
                self._cond.wait_for(lambda: len(self._pending) < self.capacity or self._error is not None)
                self._raise_if_failed()
            self._pending.append(frame)
            dropped = self._shed() if len(self._pending) > self.capacity else []
            self._cond.notify_all()
        return dropped

    def _shed(self) -> list[OutgoingFrame]:
        candidates = [f for f in self._pending if not f.sent]
        if not candidates:
            return []
        lowest = min(candidates, key=lambda f: f.proxy)
        self._pending.remove(lowest)
        self.stats.dropped += 1
        return [lowest]

    def outstanding(self) -> int:
        """Frames queued or sent and not answered yet."""
        with self._cond:
            return len(self._pending) + sum(len(m) for m in self._in_flight)

    def flush(self, timeout_s: float | None = None) -> None:
        """Waits until every submitted frame is answered (or dropped)."""
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                done = self._cond.wait_for(
                    lambda: self._error is not None or (not self._pending and not self._in_flight), timeout_s
                )
            finally:
                self._flushing -= 1
            self._raise_if_failed()
            if not done:
                raise UplinkError(f"frames still unanswered after {timeout_s:.0f}s")

    def close(self, timeout_s: float = 30.0) -> None:
        """Ends the stream once every frame is answered, then the channel."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._client is not None:
            self._client.close()
        with self._cond:
            self._raise_if_failed()

    def abort(self) -> None:
        """Stops now (Ctrl-C, a failure elsewhere): the call is cancelled, unanswered frames are given up."""
        with self._cond:
            if self._error is None:
                self._error = UplinkError("the stream was aborted")
            self._closing = True
            self._pending.clear()
            self._generation += 1
            call = self._call
            self._cond.notify_all()
        if call is not None:
            call.cancel()

    def call(self, method: str, request, timeout_s: float = 10.0):
        """A unary AggregatorService call, retried like the stream while the aggregator is unreachable."""
        return self._client.call(method, request, timeout_s)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------------------------------------ the stream
    def _requests(self, generation: int):
        while True:
            with self._cond:
                while not (
                    generation != self._generation
                    or (self._closing and not self._pending)
                    or (self._pending and self._unanswered() < self.window and self._linger_left() <= 0)
                ):
                    self._cond.wait(self._linger_left() if self._pending and self._linger_left() > 0 else None)
                if generation != self._generation:
                    return
                room = self.window - self._unanswered()
                if not self._pending or room <= 0:
                    if self._closing and not self._pending:
                        return  # half-close: the service answers what it has, then ends the call
                    continue
                message = [self._pending.popleft() for _ in range(min(self.batch, room, len(self._pending)))]
                self._in_flight.append(message)
                self.stats.sent += len(message)
                self.stats.messages += 1
                for f in message:
                    self.stats.resent += f.sent
                    f.sent = True
            frames = [image_frame(f.subject_id, f.sequence, f.image) for f in message]
            yield pb.StreamFramesRequest(frames=frames, top_k=self.top_k)

    def _linger_left(self) -> float:
        """Seconds the queued frames may still wait for more to fill a message (0: send now)."""
        if self.linger_s <= 0 or self._closing or self._flushing or len(self._pending) >= self.batch:
            return 0.0
        return self._pending[0].queued_at + self.linger_s - time.monotonic()

    def _unanswered(self) -> int:
        return sum(len(m) for m in self._in_flight)

    def _run(self) -> None:
        backoff, last_progress = 0.2, time.monotonic()
        while True:
            with self._cond:
                if self._error is not None or (self._closing and not self._pending and not self._in_flight):
                    return
                generation = self._generation
            call = self._client.stream_frames(self._requests(generation))
            with self._cond:
                self._call = call
            failure = None
            try:
                for response in call:
                    self._on_response(response)
                    backoff, last_progress = 0.2, time.monotonic()
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED and self._error is not None:
                    return  # aborted
                failure = exc
            except RuntimeError as exc:  # an answer that does not fit what was sent: nothing can be trusted after it
                self._fail(UplinkError(f"aggregator {self.target}: {exc}"))
                return
            finally:
                call.cancel()
                self._requeue()
            if failure is None:
                continue
            code = failure.code().name
            if not is_retryable(failure) or time.monotonic() - last_progress > self.reconnect_timeout_s:
                self._fail(UplinkError(f"aggregator {self.target}: {code}: {failure.details()}"))
                return
            self.stats.reconnects += 1
            self.answers.put(
                f"aggregator unreachable ({code}); reconnecting and resending {self.outstanding()} unanswered frames"
            )
            time.sleep(backoff)
            backoff = min(2 * backoff, 2.0)

    def _on_response(self, response) -> None:
        with self._cond:
            message = self._in_flight.popleft()
            self._cond.notify_all()
        if len(response.results) != len(message):
            raise RuntimeError(
                f"the aggregator answered {len(response.results)} frames for a message of {len(message)}"
            )
        matches = {m.subject_id: list(m.matches) for m in response.matches}
        for frame, result in zip(message, response.results):
            if (result.subject_id, result.sequence) != (frame.subject_id, frame.sequence):
                raise RuntimeError(
                    f"answer for {result.subject_id}#{result.sequence} where "
                    f"{frame.subject_id}#{frame.sequence} was sent"
                )
            self.stats.answered += 1
            self.stats.duplicates += result.status == 6  # FRAME_STATUS_DUPLICATE: applied before a reconnect
            self.answers.put(Answer(frame, result, matches.get(frame.subject_id, [])))

    def _requeue(self) -> None:
        """Unanswered messages back to the front of the queue, in their order; the old request stream ends."""
        with self._cond:
            self._generation += 1
            unanswered = [f for m in self._in_flight for f in m]
            self._in_flight.clear()
            self._pending.extendleft(reversed(unanswered))
            self._cond.notify_all()

    def _fail(self, error: UplinkError) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()
        self.answers.put(str(error))


def drain(answers: queue.Queue, handle: Callable[[Answer | str], None]) -> int:
    """Hands every answer queued so far to ``handle``; returns how many."""
    count = 0
    while True:
        try:
            item = answers.get_nowait()
        except queue.Empty:
            return count
        handle(item)
        count += 1
