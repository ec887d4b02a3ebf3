"""Secrets of the aggregation server come from a file or the environment, never from its command line (which any
user of the machine can read in the process list, and which the start-up log prints)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlsplit

STORE_PASSWORD_ENV = "EQFACE_STORE_PASSWORD"


def store_url_with_password(url: str, password_file: str | None, environ: dict[str, str] | None = None) -> str:
    """The store URL with the password from ``password_file`` (first line) or ``$EQFACE_STORE_PASSWORD`` added.

    Raises ValueError when the URL already carries a password (it came from the command line) or the file cannot
    be read.
    """
    parts = urlsplit(url)
    if parts.password:
        raise ValueError(
            f"the store URL carries a password: pass it with --store-password-file or ${STORE_PASSWORD_ENV}, "
            "not on the command line"
        )
    env = os.environ if environ is None else environ
    if password_file:
        try:
            password = Path(password_file).read_text().splitlines()[0] if Path(password_file).stat().st_size else ""
        except OSError as exc:
            raise ValueError(f"cannot read the store password file: {exc}") from exc
    else:
        password = env.get(STORE_PASSWORD_ENV, "")
    if not password:
        return url
    if parts.scheme != "redis":
        raise ValueError(f"a store password was given but the {parts.scheme} store takes none")
    user = quote(parts.username or "", safe="")
    return parts._replace(netloc=f"{user}:{quote(password, safe='')}@{parts.netloc}").geturl()
