"""Rate-limited logging: one line per kind of event per interval, with a count of the ones left out.

For events a client can trigger at will (malformed requests): each is worth a line, but not a line per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class QuietLog:
    """``warning(kind, message)`` logs at most once per ``interval_s`` for each ``kind``; the next line that gets
    through says how many were left out since the last one."""

    def __init__(
        self, logger: logging.Logger, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()  # deserializers may run on gRPC's threads

    def warning(self, kind: str, message: str, *args: object) -> bool:
        """Logs (and returns True) unless a line of this kind was logged less than ``interval_s`` ago."""
        now = self.clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval_s:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False
            self._last[kind] = now
            left_out = self._suppressed.pop(kind, 0)
        suffix = f" ({left_out} more like it in the last {self.interval_s:g} s not logged)" if left_out else ""
        self.logger.warning(message + suffix, *args)
        return True
