"""A stream's flow control (eqface.service.flow) without gRPC: ordering, the read-ahead window, failures, drain.

The first tests give ``StreamFlow`` plain Python steps whose timing the test controls (which message's embedding
finishes first, when a commit becomes durable); the last ones run it over the real ``AggregatorService`` on SQLite.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Iterable

import numpy as np
import pytest

from eqface.aggregation import progressive_templates
from eqface.service.aggregator import FrameStatus
from eqface.service.config import ServiceConfig
from eqface.service.engine import StreamToken
from eqface.service.errors import InvalidArgument, ResourceExhausted, ServiceError, Unavailable
from eqface.service.flow import StreamFlow
from eqface.service.inputs import RawFrame
from eqface.service.service import AggregatorService, StreamRequest
from eqface.service.store import open_store
from tests.conftest import REPO_ROOT
from tests.support.service import face_stream


class TimedSteps:
    """Messages are ints; the test opens each gate (embedding) and resolves each commit when it chooses."""

    def __init__(self, embedding: Iterable[int] = (), auto_commit: bool = True) -> None:
        self.gates = {n: asyncio.Event() for n in embedding}
        self.auto_commit = auto_commit
        self.submitted: list[int] = []
        self.commits: dict[int, asyncio.Future[str]] = {}
        self.failures: dict[int, BaseException] = {}
        self.invalid: set[int] = set()
        self.tokens: list[StreamToken] = []

    def prepare(self, request: int) -> int:
        if request in self.invalid:
            raise ResourceExhausted(f"message {request} is too big")
        return request

    def needs_embedding(self, message: int) -> bool:
        return message in self.gates

    async def embed(self, message: int) -> None:
        await self.gates[message].wait()
        if message in self.failures:
            raise self.failures[message]

    def submit(self, message: int, deadline: float | None, token: StreamToken) -> Awaitable[str]:
        self.submitted.append(message)
        self.tokens.append(token)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.commits[message] = future
        if self.auto_commit:
            future.set_result(f"durable {message}")
        return future

    def finish(self, message: int, done: str) -> str:
        return f"answer {message} ({done})"


class Requests:
    """An async iterator of ints fed by the test; counts how many messages the flow has read."""

    def __init__(self, items: Iterable[int] = (), end: bool = True, error: Exception | None = None) -> None:
        self.queue: asyncio.Queue[int | None | Exception] = asyncio.Queue()
        for item in items:
            self.queue.put_nowait(item)
        if error is not None:
            self.queue.put_nowait(error)
        elif end:
            self.queue.put_nowait(None)
        self.read = 0

    def __aiter__(self) -> Requests:
        return self

    async def __anext__(self) -> int:
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, Exception):
            raise item
        self.read += 1
        return item


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def _collect(flow: StreamFlow) -> tuple[list[str], ServiceError | None]:
    answers: list[str] = []
    try:
        async for answer in flow:
            answers.append(answer)
    except ServiceError as exc:
        return answers, exc
    return answers, None


def test_flow_control_and_the_domain_service_import_no_grpc():
    code = (
        "import sys, eqface.service.flow, eqface.service.service\n"
        "assert not any(m.startswith('grpc') for m in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr


def test_answers_and_commits_follow_read_order_when_embeddings_finish_out_of_order():
    async def run() -> None:
        steps = TimedSteps(embedding=(1, 2))
        flow = StreamFlow(steps, Requests(range(4)), window=8)
        collecting = asyncio.ensure_future(_collect(flow))
        await _settle()
        assert steps.submitted == [0]  # 1 is embedding, and 2 and 3 must not overtake it
        steps.gates[2].set()
        await _settle()
        assert steps.submitted == [0]
        steps.gates[1].set()
        answers, error = await collecting
        assert steps.submitted == [0, 1, 2, 3] and error is None
        assert answers == [f"answer {n} (durable {n})" for n in range(4)]
        assert all(token is flow.token for token in steps.tokens)  # one token per stream, for the committer
        flow.close()

    asyncio.run(run())


def test_reads_stay_within_the_window_until_answers_are_taken():
    async def run() -> None:
        steps = TimedSteps(auto_commit=False)
        requests = Requests(range(10))
        flow = StreamFlow(steps, requests, window=3)
        first = asyncio.ensure_future(anext(flow))
        await _settle()
        assert requests.read == 3 and steps.submitted == [0, 1, 2]  # back-pressure: no fourth read
        steps.commits[1].set_result("durable 1")  # durable out of order: still answered in order
        await _settle()
        assert not first.done() and requests.read == 3
        steps.commits[0].set_result("durable 0")
        assert await first == "answer 0 (durable 0)"
        await _settle()
        assert requests.read == 4  # one answer taken, one more message read
        assert await anext(flow) == "answer 1 (durable 1)"
        await _settle()
        assert requests.read == 5
        flow.close()

    asyncio.run(run())


def test_a_failed_message_ends_the_stream_and_nothing_after_it_is_applied():
    async def run() -> None:
        steps = TimedSteps(embedding=(1,))
        steps.failures[1] = Unavailable("Triton is down")
        flow = StreamFlow(steps, Requests(range(4)), window=8)
        collecting = asyncio.ensure_future(_collect(flow))
        await _settle()
        steps.gates[1].set()
        answers, error = await collecting
        assert answers == ["answer 0 (durable 0)"]
        assert isinstance(error, Unavailable) and "Triton is down" in str(error)
        assert steps.submitted == [0] and flow.token.failed  # queued batches of the stream are skipped too
        flow.close()

    asyncio.run(run())


def test_an_invalid_message_is_answered_after_every_earlier_one():
    async def run() -> None:
        steps = TimedSteps()
        steps.invalid.add(2)
        flow = StreamFlow(steps, Requests(range(5)), window=8)
        answers, error = await _collect(flow)
        assert answers == ["answer 0 (durable 0)", "answer 1 (durable 1)"]
        assert isinstance(error, ResourceExhausted) and steps.submitted == [0, 1]
        flow.close()

    asyncio.run(run())


def test_a_transport_failure_ends_the_stream_unavailable():
    async def run() -> None:
        flow = StreamFlow(TimedSteps(), Requests([0], error=ConnectionResetError("peer went away")), window=4)
        answers, error = await _collect(flow)
        assert answers == ["answer 0 (durable 0)"]
        assert isinstance(error, Unavailable) and "peer went away" in str(error)
        flow.close()

    asyncio.run(run())


def test_drain_stops_reading_answers_what_was_read_then_ends_unavailable():
    async def run() -> None:
        steps = TimedSteps(auto_commit=False)
        stop = asyncio.Event()
        requests = Requests(range(2), end=False)  # the client keeps the stream open
        flow = StreamFlow(steps, requests, window=8, stop=stop)
        collecting = asyncio.ensure_future(_collect(flow))
        await _settle()
        stop.set()
        await _settle()
        requests.queue.put_nowait(2)  # sent after the drain began: not read
        await _settle()
        assert not collecting.done()  # the read messages are not durable yet
        for n in (0, 1):
            steps.commits[n].set_result(f"durable {n}")
        answers, error = await collecting
        assert answers == ["answer 0 (durable 0)", "answer 1 (durable 1)"]
        assert isinstance(error, Unavailable) and "shutting down" in str(error)
        assert requests.read == 2 and steps.submitted == [0, 1]
        flow.close()

    asyncio.run(run())


def test_close_cancels_what_is_queued_and_marks_the_stream_failed():
    async def run() -> None:
        steps = TimedSteps(embedding=(2,), auto_commit=False)
        flow = StreamFlow(steps, Requests(range(3), end=False), window=8)
        first = asyncio.ensure_future(anext(flow))
        await _settle()
        flow.close()
        await _settle()
        assert flow.token.failed and steps.commits[1].cancelled()  # still queued when the stream ended
        steps.gates[2].set()
        await _settle()
        assert steps.submitted == [0, 1]  # the embedding message was cancelled, never submitted
        first.cancel()
        with pytest.raises(StopAsyncIteration):
            await anext(flow)

    asyncio.run(run())


# ---------------------------------------------------------------------------------- over the real domain service
async def _stream(service: AggregatorService, messages: list[list[RawFrame]]) -> tuple[list, ServiceError | None]:
    async def requests() -> AsyncIterator[StreamRequest]:
        for frames in messages:
            yield StreamRequest(frames)

    async with service.stream(requests(), None) as answers:
        return await _collect(answers)  # type: ignore[arg-type]


def _frames(subject: str, features: np.ndarray, qualities: np.ndarray, first: int) -> list[RawFrame]:
    return [
        RawFrame(subject, first + i, embedding=f.astype("<f4").tobytes(), quality=float(q))
        for i, (f, q) in enumerate(zip(features, qualities))
    ]


def test_service_stream_answers_in_order_and_a_bad_frame_fails_alone(tmp_path):
    f, q = face_stream(11, 12, low=0.4)

    async def run() -> None:
        url = f"sqlite:///{tmp_path}/s.db"
        service = AggregatorService(ServiceConfig(store_url=url), open_store(url))
        await service.start()
        try:
            messages = [_frames("s", f[i : i + 4], q[i : i + 4], i + 1) for i in range(0, 12, 4)]
            messages[1][1] = RawFrame("s", 6, embedding=b"\x00" * 12, quality=0.5)  # wrong size: INVALID alone
            messages.append(_frames("s", f[:2], q[:2], 1))  # resent: duplicates
            results, error = await _stream(service, messages)
            assert error is None and service.metrics.registry.get_sample_value("eqface_aggregator_open_streams") == 0
            outcomes = [o for r in results for o in r.outcomes]
            assert [o.sequence for o in outcomes] == [*range(1, 13), 1, 2]
            statuses = [o.status for o in outcomes]
            assert statuses[5] is FrameStatus.INVALID and isinstance(outcomes[5].error, InvalidArgument)
            assert FrameStatus.INVALID not in statuses[:5] + statuses[6:12]
            assert statuses[12:] == [FrameStatus.DUPLICATE] * 2
            record = await service.get_subject("s")
            kept = [i for i in range(12) if i != 5]
            np.testing.assert_allclose(
                record.aggregate.template, progressive_templates(f[kept], q[kept])[-1], atol=1e-6
            )
        finally:
            await service.stop()

    asyncio.run(run())


def test_service_drain_commits_what_was_read(tmp_path):
    f, q = face_stream(12, 8, low=0.4)

    async def run() -> None:
        url = f"sqlite:///{tmp_path}/d.db"
        service = AggregatorService(ServiceConfig(store_url=url), open_store(url))
        await service.start()
        sent = asyncio.Queue()

        async def requests() -> AsyncIterator[StreamRequest]:
            while True:
                yield StreamRequest(await sent.get())

        try:
            async with service.stream(requests(), None) as answers:
                sent.put_nowait(_frames("d", f[:4], q[:4], 1))
                first = await anext(answers)
                sent.put_nowait(_frames("d", f[4:], q[4:], 5))
                await _settle()
                service.draining.set()
                rest, error = await _collect(answers)
            assert [o.sequence for r in [first, *rest] for o in r.outcomes] == list(range(1, 9))
            assert isinstance(error, Unavailable)
            assert (await service.get_subject("d")).last_sequence == 8
        finally:
            await service.stop()

    asyncio.run(run())
