"""Settings of biometric data hygiene: how long templates are kept (retention) and where the audit log goes.

``ServiceConfig.hygiene`` holds one ``HygieneConfig``; ``eqface.service.retention`` and ``eqface.service.audit``
act on it. What is stored, where and for how long is described in the service README ("Biometric data").
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_S = 86_400.0


@dataclass(frozen=True)
class RetentionConfig:
    """Templates not written for a while are deleted (store, cache and gallery), at start and every ``interval_s``.

    Attributes:
        subject_days: a subject (its progressive template) not updated for this many days is deleted; a frame, a
            reset or a re-creation counts as an update. None keeps subjects until they are deleted.
        identity_days: a gallery identity not enrolled (or re-enrolled with overwrite) for this many days is
            removed. None keeps them until RemoveIdentity.
        interval_s: seconds between two sweeps.
        batch_size: most records one store call deletes (a sweep repeats until nothing is left), which bounds how
            long one purge holds the store.
    """

    subject_days: float | None = None
    identity_days: float | None = None
    interval_s: float = 3600.0
    batch_size: int = 1000

    def __post_init__(self) -> None:
        for name in ("subject_days", "identity_days"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"retention {name} must be > 0 days (or unset to keep forever), got {value}")
        if not self.interval_s > 0 or self.batch_size <= 0:
            raise ValueError(
                f"retention interval_s and batch_size must be > 0, got {self.interval_s}, {self.batch_size}"
            )

    @property
    def enabled(self) -> bool:
        return self.subject_days is not None or self.identity_days is not None


@dataclass(frozen=True)
class AuditConfig:
    """Where the audit log of Enroll, DeleteSubject, ResetSubject, RemoveIdentity, GetTemplate and retention purges
    goes: one JSON object per line (who, what, when, outcome; never a template).

    Attributes:
        path: a file the lines are appended to; None sends them to the ``eqface.audit`` logger at INFO instead (to
            stderr with the service's log configuration, or wherever a deployment routes that logger).
    """

    path: str | None = None


@dataclass(frozen=True)
class HygieneConfig:
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
