"""Domain errors of the aggregation service; the servicer maps each to one gRPC status code."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: an error whose message is safe and useful to show to the client."""


class InvalidArgument(ServiceError):
    """The request (or one frame of it) is malformed: bad id, embedding, quality, image, page token."""


class NotFound(ServiceError):
    """An unknown subject or identity."""


class AlreadyExists(ServiceError):
    """Enrolling an identity that exists without ``overwrite``."""


class FailedPrecondition(ServiceError):
    """The request is well formed but cannot be served in the current state (no template yet, no Triton configured)."""


class ResourceExhausted(ServiceError):
    """A request above a configured limit (frames per message, top-k)."""


class Unavailable(ServiceError):
    """A dependency (Triton, the store) is unreachable, or the server is shutting down; retrying later may work."""


class DeadlineExceeded(ServiceError):
    """The call's deadline passed before its update was applied; nothing was applied."""


class Aborted(ServiceError):
    """A concurrent writer kept winning the optimistic update of a subject; nothing was applied."""


class Internal(ServiceError):
    """A broken invariant, e.g. a model output that violates the inference contract."""


class RateLimited(ResourceExhausted):
    """A per-tenant rate limit was reached; ``retry_after_s`` says when the request would be admitted."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        retry_after_s = max(retry_after_s, 0.01)
        super().__init__(f"{message}; retry in {retry_after_s:.2f} s")
        self.retry_after_s = retry_after_s
