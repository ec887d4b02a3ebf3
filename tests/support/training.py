"""Helpers for tests that interrupt a training run."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from eqface import processes
from eqface.train import checkpoint


def kill_when_checkpointed(child: processes.Child, ckpt: Path, min_iteration: int, timeout: float = 120) -> int:
    """SIGKILLs the training run as soon as its checkpoint reaches ``min_iteration``; returns that iteration."""
    seen = [-1]

    def checkpointed() -> bool:
        if ckpt.exists():
            try:
                seen[0] = checkpoint.load(ckpt)["iteration"]
            except (ValueError, KeyError):
                pass  # caught mid-rename; try again
        return seen[0] >= min_iteration

    try:
        processes.wait_until(
            checkpointed, child, timeout, f"a checkpoint at iteration {min_iteration}", interval_s=0.01
        )
    except processes.ProcessStartError as exc:
        pytest.fail(f"training could not be killed mid-run: {exc}")
    child.stop(signal.SIGKILL)
    return seen[0]
