"""A :class:`~eqface.serving.launcher.TritonServer` owned by a helper process, for callers that hold gRPC channels.

The launcher starts tritonserver with a ``preexec_fn`` (so the server dies with its parent), which forces fork(); a
fork in a process that holds gRPC channels can hang in gRPC's fork handlers. Such a caller (a test talking to the
aggregator, a benchmark) starts this helper instead, with no ``preexec_fn``; the helper starts the server, writes its
endpoints to a file, and stops it when its stdin closes — also when the caller dies, since the kernel closes the pipe.

    python -m eqface.serving.helper_process REPOSITORY READY_FILE [GRPC_PORT HTTP_PORT METRICS_PORT]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from eqface import processes


class TritonHelper:
    """Triton on ``repository`` run by a helper process; ``ports`` (gRPC, HTTP, metrics) stay the same across
    ``stop()`` and ``start()``, as a restarted deployment's would. ``pid`` is tritonserver's own."""

    def __init__(self, repository: Path, log_path: Path, ports: tuple[int, int, int] | None = None) -> None:
        self.repository = Path(repository)
        self.log_path = Path(log_path)
        self.ports = ports or (processes.free_port(), processes.free_port(), processes.free_port())
        self.pid: int | None = None
        self._child: processes.Child | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports[1]}"

    def start(self, timeout_s: float = 240.0) -> TritonHelper:
        ready = self.log_path.with_suffix(".ready.json")
        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", __name__, str(self.repository), str(ready), *map(str, self.ports)]
        self._child = processes.start(
            "triton helper", argv, self.log_path, stdin=subprocess.PIPE, die_with_parent=False
        )
        try:
            processes.wait_until(ready.exists, self._child, timeout_s, f"Triton ready on {self.grpc_url}")
        except BaseException:
            self.stop()
            raise
        self.pid = json.loads(ready.read_text())["pid"]
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """Closes the helper's stdin (it stops Triton in order), then stops whatever is left of it."""
        child, self._child = self._child, None
        self.pid = None
        if child is None:
            return
        if child.process.stdin is not None:
            child.process.stdin.close()
        try:
            child.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        child.stop(grace_s=10)

    def __enter__(self) -> TritonHelper:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    from eqface.serving.launcher import TritonServer

    repository, ready = Path(argv[0]), Path(argv[1])
    grpc_port, http_port, metrics_port = (int(p) for p in argv[2:5]) if len(argv) >= 5 else (0, 0, 0)
    server = TritonServer(repository, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
    try:
        server.start()
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps({"grpc_url": server.grpc_url, "http_url": server.http_url, "pid": server.pid}))
        tmp.replace(ready)  # the caller never reads half a file
        print(f"tritonserver ready (pid {server.pid}) on {server.grpc_url}", flush=True)
        sys.stdin.read()  # until the caller closes stdin, or dies
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
