"""Triton's model-control API locked with a key: the server's restricted-protocol flags and the clients' headers.

Model control (load, unload, repository index), shared-memory registration, tracing and logging settings change the
server; inference, health, metadata, model config and statistics do not. The first group is restricted to callers
that send the key (Triton's ``--grpc-restricted-protocol`` / ``--http-restricted-api``), which only the deploy job
holds; the aggregator needs none of it. The key is read from a file (``EQFACE_TRITON_CONTROL_KEY_FILE``, a mounted
Kubernetes Secret) or from ``EQFACE_TRITON_CONTROL_KEY``; it is never a command-line flag of ours.

Triton itself only takes the key on its own command line (it has no config file or environment variable for it), so
the value is visible in the server's ``/proc/<pid>/cmdline`` to users who may read that process's details: in
Kubernetes only the Triton container's own processes (its pod shares no process namespace); locally, the user
running it and root (``hidepid`` mounts of /proc hide it from the others).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

# The HTTP header a caller sends; over gRPC Triton expects the metadata key with this prefix.
CONTROL_HEADER = "eqface-control-key"
GRPC_PREFIX = "triton-grpc-protocol-"
RESTRICTED = ("model-repository", "shared-memory", "trace", "logging")
KEY_FILE_ENV = "EQFACE_TRITON_CONTROL_KEY_FILE"
KEY_ENV = "EQFACE_TRITON_CONTROL_KEY"
_KEY = re.compile(r"[A-Za-z0-9._~-]{16,256}")


def check_key(key: str) -> str:
    """The key, if usable: 16 to 256 characters of ``A-Z a-z 0-9 . _ ~ -`` (Triton's flag syntax uses ``:``, ``,``
    and ``=``; a header value must be plain text).

    Raises:
        ValueError: the key is too short, too long or has another character.
    """
    if not _KEY.fullmatch(key):
        raise ValueError(
            f"a Triton control key must be 16-256 characters of A-Z a-z 0-9 . _ ~ - (got {len(key)} characters); "
            "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return key


def new_key() -> str:
    return secrets.token_urlsafe(32)


def read_key(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The control key from ``path``, else the file named by ``EQFACE_TRITON_CONTROL_KEY_FILE``, else the value of
    ``EQFACE_TRITON_CONTROL_KEY``; None when none is set (model control is then open). Surrounding whitespace (a
    file's final newline) is ignored.

    Raises:
        FileNotFoundError: the named file does not exist.
        ValueError: the key is not usable (see ``check_key``).
    """
    env = os.environ if environ is None else environ
    path = path or env.get(KEY_FILE_ENV) or None
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"Triton control key file {path} does not exist (named by --control-key-file or {KEY_FILE_ENV}; in "
                "Kubernetes: create the Secret eqface-triton-control with a key named 'key')"
            )
        return check_key(Path(path).read_text().strip())
    value = env.get(KEY_ENV, "").strip()
    return check_key(value) if value else None


def server_args(key: str) -> list[str]:
    """tritonserver flags that restrict ``RESTRICTED`` to callers sending ``key`` (gRPC and HTTP)."""
    spec = f"{','.join(RESTRICTED)}:{CONTROL_HEADER}={check_key(key)}"
    return [f"--grpc-restricted-protocol={spec}", f"--http-restricted-api={spec}"]


def headers(key: str | None, protocol: Literal["grpc", "http"]) -> dict[str, str] | None:
    """The headers (tritonclient's ``headers=``) a control call sends; None without a key."""
    if key is None:
        return None
    name = GRPC_PREFIX + CONTROL_HEADER if protocol == "grpc" else CONTROL_HEADER
    return {name: key}
