"""Settings of biometric data hygiene: how long templates are kept (retention) and where the audit log goes.

``ServiceConfig.hygiene`` holds one ``HygieneConfig``; ``eqface.service.retention`` and ``eqface.service.audit``
act on it. What is stored, where and for how long is described in the service README ("Biometric data").
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any

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


# ---------------------------------------------------------------------------------------------- command line
# One flag per field, ``dest`` = "<section>_<field>", so that ``hygiene_from_args`` builds the config by name.
_SECTIONS: dict[str, type] = {"retention": RetentionConfig, "audit": AuditConfig}


def add_hygiene_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = RetentionConfig()
    group = parser.add_argument_group("biometric data hygiene (retention, audit log)")
    group.add_argument(
        "--retention-days",
        dest="retention_subject_days",
        type=float,
        help="delete subjects (templates) not updated for this many days (default: keep)",
    )
    group.add_argument(
        "--identity-retention-days",
        dest="retention_identity_days",
        type=float,
        help="remove gallery identities not enrolled for this many days (default: keep)",
    )
    group.add_argument(
        "--retention-interval",
        dest="retention_interval_s",
        type=float,
        default=defaults.interval_s,
        help="seconds between retention sweeps (%(default)s; one also runs at start)",
    )
    group.add_argument(
        "--retention-batch",
        dest="retention_batch_size",
        type=int,
        default=defaults.batch_size,
        help="most records deleted per store call (%(default)s)",
    )
    group.add_argument(
        "--audit-log",
        dest="audit_path",
        help="append the audit log (JSON lines) to this file (default: the 'eqface.audit' logger)",
    )


def hygiene_from_args(values: dict[str, Any]) -> HygieneConfig:
    sections = {
        name: cls(**{f.name: values[f"{name}_{f.name}"] for f in fields(cls)}) for name, cls in _SECTIONS.items()
    }
    return HygieneConfig(**sections)


def hygiene_flag_dests() -> set[str]:
    """The ``dest`` of every hygiene flag (the command-line test checks that each field has one)."""
    return {f"{name}_{f.name}" for name, cls in _SECTIONS.items() for f in fields(cls)}
