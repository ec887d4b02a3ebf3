"""Authentication and authorisation of every call, in one server interceptor.

``REQUIRED_ROLE`` is the one table of which role each method needs. The interceptor establishes the caller (a bearer
token when one is sent, else the verified client certificate; ``identity`` maps either to a ``Caller``), checks the
method's role, and runs the handler with the caller set, where ``eqface.service.caller.caller_of`` finds it.
Missing or invalid credentials end the call UNAUTHENTICATED, a missing role PERMISSION_DENIED, each with a short
message and no traceback. Health checks are exempt: they reveal only whether the service is serving.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from eqface.service.caller import LOCAL_CALLER, Caller, Role, authenticated_as
from eqface.service.security.config import SecurityConfig
from eqface.service.security.identity import InvalidIdentity, caller_from_certificate, caller_from_claims
from eqface.service.security.tokens import InvalidToken, TokenVerifier

log = logging.getLogger(__name__)
_AGG = "/eqface.service.v1.AggregatorService/"

# Plain Enroll is ADMIN: it changes the gallery that every Identify and stream is matched against (enrolling a face
# under an existing name takes that identity over as surely as an overwrite does).
REQUIRED_ROLE: dict[str, Role | None] = {
    _AGG + "StreamFrames": Role.STREAM,
    _AGG + "GetTemplate": Role.READ,  # the template bytes themselves only for RAW_TEMPLATE_ROLE
    _AGG + "ListSubjects": Role.READ,
    _AGG + "Identify": Role.READ,
    _AGG + "ListIdentities": Role.READ,
    _AGG + "Enroll": Role.ADMIN,
    _AGG + "RemoveIdentity": Role.ADMIN,
    _AGG + "DeleteSubject": Role.ADMIN,
    _AGG + "ResetSubject": Role.ADMIN,
    # reflection (when enabled) describes the API to any authenticated caller
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": None,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": None,
}
RAW_TEMPLATE_ROLE = Role.ADMIN  # GetTemplate returns the biometric template itself only to this role
EXEMPT = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


class Denied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Authenticator:
    """Establishes the caller of a call from its metadata and TLS peer."""

    def __init__(self, config: SecurityConfig) -> None:
        self.insecure = config.insecure
        self.mutual_tls = config.mutual_tls
        self.tokens = TokenVerifier(config) if config.tokens else None
        self._by_cert: dict[bytes, Caller] = {}  # parsed certificates (a connection's calls share one)

    def caller(self, context: grpc.aio.ServicerContext) -> Caller:
        if self.insecure:
            return LOCAL_CALLER
        token = _bearer_token(context.invocation_metadata() or ())
        try:
            if token is not None:
                if self.tokens is None:
                    raise Denied(grpc.StatusCode.UNAUTHENTICATED, "bearer tokens are not accepted by this server")
                return caller_from_claims(self.tokens.verify(token))
            if self.mutual_tls:
                certs = context.auth_context().get("x509_pem_cert")
                if certs:
                    return self._certificate_caller(certs[0])
        except (InvalidToken, InvalidIdentity) as exc:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, f"invalid credentials: {exc}") from None
        raise Denied(grpc.StatusCode.UNAUTHENTICATED, "no credentials: send a client certificate or a bearer token")

    def _certificate_caller(self, pem: bytes) -> Caller:
        caller = self._by_cert.get(pem)
        if caller is None:
            caller = caller_from_certificate(pem)
            if len(self._by_cert) >= 10_000:
                self._by_cert.clear()
            self._by_cert[pem] = caller
        return caller


def authorise(caller: Caller, method: str) -> None:
    """Raises Denied unless ``caller`` may call ``method``."""
    if method not in REQUIRED_ROLE:
        raise Denied(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not open to callers")
    role = REQUIRED_ROLE[method]
    if role is not None and role not in caller.roles:
        raise Denied(grpc.StatusCode.PERMISSION_DENIED, f"{method.rsplit('/', 1)[-1]} needs the {role.value} role")


def _bearer_token(metadata: Any) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler but the exempt ones: authenticate, authorise, then run with the caller set."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: Any
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method in EXEMPT:
            return handler
        return _wrap(handler, details.method, self._admit)

    def _admit(self, method: str, context: grpc.aio.ServicerContext) -> Caller:
        caller = self.authenticator.caller(context)
        authorise(caller, method)
        return caller


_FACTORIES = {  # (request streaming, response streaming) -> handler factory
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _wrap(handler: grpc.RpcMethodHandler, method: str, admit: Callable[..., Caller]) -> grpc.RpcMethodHandler:
    """The same handler, run only once ``admit`` established its caller, and with that caller set."""
    behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream

    async def check(context: grpc.aio.ServicerContext) -> Caller:
        try:
            return admit(method, context)
        except Denied as exc:
            log.debug("%s refused: %s", method, exc)
            await context.abort(exc.code, str(exc))
            raise AssertionError("unreachable: abort raises") from None

    if handler.response_streaming:

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with authenticated_as(await check(context)):
                async for response in behavior(request, context):
                    yield response

    else:

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with authenticated_as(await check(context)):
                return await behavior(request, context)

    factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(wrapped, handler.request_deserializer, handler.response_serializer)
