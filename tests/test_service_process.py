"""The server as a real child process: kill -9 during acknowledged streams loses nothing; SIGTERM drains.

EQFACE_KILL_ROUNDS sets the number of kill -9 rounds on SQLite (default 20; Redis runs a quarter of them, SQLite over
mutual TLS a fifth).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from eqface.aggregation import ProgressiveQWFA
from eqface.service.client import feature_frame, template_of
from eqface.service.v1 import aggregator_pb2 as pb
from tests.conftest import REPO_ROOT
from tests.support.auth import TestAuthority
from tests.support.service import ServerProcess, aggregator_stub, face_stream, redis_server  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SUBJECTS = ("door-1", "door-2", "lobby")
FRAMES_PER_SUBJECT = 8  # per message
KILL_ROUNDS = int(os.environ.get("EQFACE_KILL_ROUNDS", "20"))


class Client:
    """Streams all subjects' frames from where the last acknowledgement left off; records what was acknowledged.

    Frame ``seq`` of a subject is entry ``(seq - 1) % POOL`` of its pool of synthetic frames; the expected template is
    an offline ``ProgressiveQWFA`` advanced over exactly the frames 1..last applied.
    """

    POOL = 4096

    def __init__(self, total: int) -> None:
        self.pool = {sid: face_stream(100 + i, self.POOL, noise=0.05) for i, sid in enumerate(SUBJECTS)}
        self.reference = {sid: (0, ProgressiveQWFA()) for sid in SUBJECTS}
        self.acked = dict.fromkeys(SUBJECTS, 0)
        self.total = total
        self.replayed_duplicates = 0
        self.lock = threading.Lock()

    def frame(self, sid: str, seq: int) -> tuple[np.ndarray, float]:
        f, q = self.pool[sid]
        i = (seq - 1) % self.POOL
        return f[i], float(q[i])

    def expected_template(self, sid: str, last: int) -> np.ndarray:
        done, state = self.reference[sid]
        if last < done:
            raise AssertionError(f"{sid}: the stored last sequence went back from {done} to {last}")
        for seq in range(done + 1, last + 1):
            state.update(*self.frame(sid, seq))
        self.reference[sid] = (last, state)
        return state.template

    def requests(self, start: dict[str, int]):
        position = dict(start)
        while all(position[s] <= self.total for s in SUBJECTS):
            frames = []
            for sid in SUBJECTS:
                for seq in range(position[sid], min(position[sid] + FRAMES_PER_SUBJECT, self.total + 1)):
                    frames.append(feature_frame(sid, seq, *self.frame(sid, seq)))
                position[sid] += FRAMES_PER_SUBJECT
            yield pb.StreamFramesRequest(frames=frames)

    def stream(self, stub, first_ack: threading.Event, applied: dict[str, int]) -> grpc.StatusCode | None:
        """Resumes from the first unacknowledged frame (so frames applied but not acknowledged come back)."""
        start = {sid: self.acked[sid] + 1 for sid in SUBJECTS}
        try:
            for response in stub.StreamFrames(self.requests(start), timeout=60):
                with self.lock:
                    for r in response.results:
                        assert r.status != pb.FRAME_STATUS_INVALID, r
                        if r.status == pb.FRAME_STATUS_DUPLICATE:
                            assert r.sequence <= applied[r.subject_id], (r, applied)
                            self.replayed_duplicates += 1
                        else:
                            assert r.sequence > applied[r.subject_id]
                        assert r.sequence == self.acked[r.subject_id] + 1, "acknowledgements out of order"
                        self.acked[r.subject_id] = r.sequence
                first_ack.set()
        except grpc.RpcError as exc:
            first_ack.set()
            return exc.code()
        return None

    def check_store(self, stub) -> dict[str, int]:
        """Every acknowledged frame is applied, each exactly once, in order: the template equals the offline one."""
        applied = {}
        for sid in SUBJECTS:
            state = stub.GetTemplate(pb.GetTemplateRequest(subject_id=sid), timeout=10).subject
            last = state.last_sequence
            assert last >= self.acked[sid], f"{sid}: acknowledged {self.acked[sid]}, stored only {last}"
            assert state.frame_count == last, f"{sid}: {state.frame_count} frames counted for sequences 1..{last}"
            np.testing.assert_allclose(template_of(state), self.expected_template(sid, last), atol=1e-5, err_msg=sid)
            applied[sid] = last
        return applied


def _kill_rounds(tmp_path: Path, store: str, rounds: int, authority: TestAuthority | None = None) -> Client:
    """kill -9 rounds; with ``authority`` over mutual TLS as a client of tenant "acme" (namespaced keys)."""
    client = Client(total=200_000)
    applied = dict.fromkeys(SUBJECTS, 0)
    rng = random.Random(1234)
    credentials = authority.credentials("camera", "acme") if authority is not None else None
    args = ["--store", store, "--metrics-port", "0"]
    for round_ in range(rounds):
        server = ServerProcess(args, tmp_path / f"server{round_}.log", authority).start()
        try:
            with aggregator_stub(server.target, credentials) as stub:
                if round_:
                    applied = client.check_store(stub)
                first_ack = threading.Event()

                def kill_soon() -> None:
                    first_ack.wait(10)
                    time.sleep(rng.uniform(0.05, 0.6))
                    server.kill()

                killer = threading.Thread(target=kill_soon)
                killer.start()
                code = client.stream(stub, first_ack, applied)
                killer.join(20)
                assert code == grpc.StatusCode.UNAVAILABLE, f"round {round_}: stream ended with {code}"
        finally:
            server.kill()
    with ServerProcess(args, tmp_path / "final.log", authority).start() as server:
        with aggregator_stub(server.target, credentials) as stub:
            client.check_store(stub)
    return client


def test_kill_9_loses_no_acknowledged_frame_sqlite(tmp_path):
    client = _kill_rounds(tmp_path, f"sqlite:///{tmp_path}/state.db", KILL_ROUNDS)
    acked = sum(client.acked.values())
    print(
        f"\nSQLite: {KILL_ROUNDS} kill -9 rounds, {acked} frames acknowledged, all present; "
        f"{client.replayed_duplicates} resent frames were already applied and answered DUPLICATE"
    )
    assert acked > KILL_ROUNDS * len(SUBJECTS)


def test_kill_9_loses_no_acknowledged_frame_with_mutual_tls(tmp_path):
    """The same over mutual TLS, as a non-default tenant (its subjects under namespaced store keys)."""
    rounds = max(2, KILL_ROUNDS // 5)
    client = _kill_rounds(tmp_path, f"sqlite:///{tmp_path}/state.db", rounds, TestAuthority(tmp_path / "auth"))
    acked = sum(client.acked.values())
    print(f"\nSQLite + mutual TLS: {rounds} kill -9 rounds, {acked} frames acknowledged, all present")
    assert acked > rounds * len(SUBJECTS)


def test_kill_9_loses_no_acknowledged_frame_redis(tmp_path, redis_server):  # noqa: F811
    rounds = max(2, KILL_ROUNDS // 4)
    client = _kill_rounds(tmp_path, redis_server.url(), rounds)
    print(f"\nRedis: {rounds} kill -9 rounds, {sum(client.acked.values())} frames acknowledged, all present")


def test_sigterm_drains_every_frame_it_read(tmp_path):
    store = f"sqlite:///{tmp_path}/state.db"
    client = Client(total=100_000)
    applied = dict.fromkeys(SUBJECTS, 0)
    with ServerProcess(["--store", store, "--metrics-port", "0"], tmp_path / "drain.log").start() as server:
        with aggregator_stub(server.target) as stub:
            first_ack = threading.Event()
            result: list[grpc.StatusCode | None] = []
            streamer = threading.Thread(target=lambda: result.append(client.stream(stub, first_ack, applied)))
            streamer.start()
            assert first_ack.wait(20)
            time.sleep(0.3)
            exit_code = server.terminate()
            streamer.join(30)
    log = server.log_tail()
    assert exit_code == 0, log
    assert result == [grpc.StatusCode.UNAVAILABLE] and "draining" in log and "stopped" in log
    with ServerProcess(["--store", store, "--metrics-port", "0"], tmp_path / "after.log").start() as server:
        with aggregator_stub(server.target) as stub:
            stored = client.check_store(stub)
    assert stored == client.acked  # every frame the server read was answered before it exited, none beyond


def test_help_explains_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "eqface.service", "--help"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )
    assert out.returncode == 0
    for option in (
        "--port",
        "--metrics-port",
        "--store",
        "--triton-url",
        "--f-th",
        "--s-th",
        "--max-message-mib",
        "--max-frames-per-message",
        "--shutdown-grace",
        "sqlite:///",
        "redis://",
        "provisional",
    ):
        assert option in out.stdout


def test_port_in_use_fails_cleanly(tmp_path):
    with ServerProcess(["--store", f"sqlite:///{tmp_path}/a.db", "--metrics-port", "0"], tmp_path / "a.log") as first:
        args = [
            sys.executable,
            "-m",
            "eqface.service",
            "--host",
            "127.0.0.1",
            "--port",
            str(first.port),
            "--store",
            f"sqlite:///{tmp_path}/b.db",
            "--metrics-port",
            "0",
            "--insecure",
        ]
        out = subprocess.run(args, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 1 and "eqface aggregator:" in out.stderr
