"""``eqface stack demo``: the stack in the foreground for one demo session — start it, stream the demo video, show
what Prometheus saw, stop everything. Ctrl-C or SIGTERM stops it cleanly at any point."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from eqface.camera.clip import ClipSpec
from eqface.stack import report
from eqface.stack.demo import DemoOptions, Subject, enroll_and_stream
from eqface.stack.stack import LocalStack, StackConfig, write_state

INTERRUPTED = 130


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_demo(
    config: StackConfig,
    subjects: list[Subject],
    options: DemoOptions,
    out=print,
    clip_dir: Path | None = None,
    clip_spec: ClipSpec = ClipSpec(),
) -> int:
    """Runs the session; returns 0, or 130 when interrupted. Every child process is stopped on the way out. With
    ``clip_dir`` the subjects' camera clip is made there and streamed through the camera client afterwards."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops as cleanly as Ctrl-C
    stack = LocalStack(config)
    try:
        out("starting the stack …")
        stack.start()
        state = {"status": "demo", "model": config.model.origin, "endpoints": vars(stack.endpoints)}
        write_state(config.state_dir, state)
        out(f"stack ready (logs in {stack.logs_dir}):")
        for line in report.endpoint_lines(stack.endpoints):
            out(line)
        auth = stack.endpoints.client_auth()
        enroll_and_stream(stack.endpoints.aggregator_grpc, [subjects], options, out=out, auth=auth)
        if clip_dir is not None:
            from eqface.stack.clip_demo import stream_clip

            aggregator = stack.endpoints.aggregator_grpc
            stream_clip(aggregator, subjects, clip_dir, options.match_threshold, out=out, spec=clip_spec, auth=auth)
        if stack.endpoints.prometheus:
            report.report_prometheus(stack.endpoints.prometheus, config.scrape_interval_s, time.time(), out=out)
    except KeyboardInterrupt:
        out("\ninterrupted: stopping the stack …")
        return INTERRUPTED
    finally:
        codes = stack.stop()
        out(report.stopped_line(codes, stack.endpoints))
        signal.signal(signal.SIGTERM, previous)
    return 0
