"""Who is calling: the principal, its tenant and its roles, as the service's handlers see them.

This is the seam between authentication (which establishes a ``Caller`` from the connection's TLS peer certificate or
a bearer token) and everything that depends on the caller: authorisation per method, tenant-namespaced store keys,
per-tenant quotas and the audit log. ``caller_of(context)`` is the one way a handler learns its caller.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


class Role(enum.Enum):
    """What a caller may do. ``STREAM``: send frames; ``READ``: read its tenant's subjects and identities;
    ``ADMIN``: enroll with overwrite, delete, read raw templates, change the gallery."""

    STREAM = "stream"
    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller. ``tenant`` always comes from the caller's credentials, never from a request field."""

    principal: str
    tenant: str
    roles: frozenset[Role]

    def __post_init__(self) -> None:
        if not self.principal or not self.tenant:
            raise ValueError("a caller needs a principal and a tenant")


DEFAULT_TENANT = "default"
LOCAL_CALLER = Caller(principal="local", tenant=DEFAULT_TENANT, roles=frozenset(Role))


# Set by the server's AuthInterceptor (eqface.service.security.authz) around each handler; each RPC runs in its own
# task, so its value is that call's caller (and tasks the handler starts inherit it).
_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("eqface_caller", default=None)


class NotAuthenticated(RuntimeError):
    """A handler ran without an authenticated caller: the server was built without its AuthInterceptor."""


def caller_of(context: Any) -> Caller:
    """The authenticated caller of the RPC whose servicer context this is (``LOCAL_CALLER`` on an ``--insecure``
    server). Fails closed: raises NotAuthenticated outside an authenticated call."""
    caller = _CALLER.get()
    if caller is None:
        raise NotAuthenticated("no authenticated caller for this call")
    return caller


@contextlib.contextmanager
def authenticated_as(caller: Caller) -> Iterator[Caller]:
    """Runs the block as ``caller`` (the interceptor's side of ``caller_of``)."""
    token = _CALLER.set(caller)
    try:
        yield caller
    finally:
        with contextlib.suppress(ValueError):  # an async generator closed from another context
            _CALLER.reset(token)
