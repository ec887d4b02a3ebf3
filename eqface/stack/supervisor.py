"""The process behind ``eqface stack up``: runs a :class:`LocalStack` in the background until SIGTERM/SIGINT (``eqface
stack down``), keeps ``state.json`` current, and stops everything if one part dies.

    python -m eqface.stack.supervisor STATE_DIR      # reads STATE_DIR/stack.json written by `eqface stack up`
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from eqface.processes import process_start_ticks
from eqface.stack.stack import LocalStack, StackConfig, write_state

CONFIG_FILE = "stack.json"


class _Stop(Exception):
    pass


def _raise_stop(signum, frame) -> None:
    raise _Stop


def run(state_dir: Path) -> int:
    config = StackConfig.from_json(json.loads((state_dir / CONFIG_FILE).read_text()))
    me = {"pid": os.getpid(), "start_ticks": process_start_ticks(os.getpid())}
    state = {
        "status": "starting",
        "supervisor": me,
        "model": config.model.origin,
        "trained_on": config.model.trained_on,
        "started": time.time(),
    }
    write_state(state_dir, state)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    stack = LocalStack(config)
    code = 0
    try:
        stack.start()
        state.update(status="ready", endpoints=vars(stack.endpoints))
        write_state(state_dir, state)
        print(f"stack ready: {json.dumps(vars(stack.endpoints))}", flush=True)
        while (failed := stack.failed_part()) is None:
            time.sleep(0.5)
        print(f"{failed} exited on its own; stopping the stack. Its log ends:\n{stack.log_tail(failed)}", flush=True)
        state.update(status="failed", error=f"{failed} exited on its own")
        code = 1
    except _Stop:
        state["status"] = "stopping"
    except Exception as exc:  # start-up failed: the state file tells `eqface stack up` why
        state.update(status="failed", error=str(exc))
        print(f"stack failed: {exc}", flush=True)
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second `down` must not interrupt the orderly stop
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        write_state(state_dir, state)
        codes = stack.stop()
        state.update(status="stopped" if state["status"] == "stopping" else state["status"], exit_codes=codes)
        write_state(state_dir, state)
        print(f"stack stopped: {codes}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
