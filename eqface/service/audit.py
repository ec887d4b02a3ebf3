"""The audit log of operations on biometric data: one JSON object per line, who did what to which record and how it
ended. Templates, images and embeddings never appear in it; record ids and the caller's principal and tenant do.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from eqface.service.caller import Caller
from eqface.service.hygiene import AuditConfig

LOGGER_NAME = "eqface.audit"
SYSTEM = Caller(principal="system:retention", tenant="*", roles=frozenset())  # who purges expired records
# A refused call's target is whatever the client sent: cut it (valid ids are at most 256 bytes) so that a huge one
# cannot bloat the log; JSON escapes any control character in it.
MAX_TARGET_CHARS = 300


class AuditLog:
    """Appends audit lines to ``config.path`` (flushed per line) or logs them to ``eqface.audit`` at INFO."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._logger = logging.getLogger(LOGGER_NAME)
        if config.path is not None:
            path = Path(config.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def record(self, caller: Caller, action: str, target: str, outcome: str, **details: Any) -> None:
        """One line: ``time`` (UTC, ISO 8601), ``principal``, ``tenant``, ``action``, ``target``, ``outcome`` ("OK"
        or the gRPC status name) and the given details (plain values: ids, counts, flags)."""
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "principal": caller.principal,
            "tenant": caller.tenant,
            "action": action,
            "target": target if len(target) <= MAX_TARGET_CHARS else target[:MAX_TARGET_CHARS] + "…",
            "outcome": outcome,
            **details,
        }
        line = json.dumps(entry, ensure_ascii=False)
        if self._file is None:
            self._logger.info("%s", line)
            return
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
