"""Registration of the servicer with request decoding that answers INVALID_ARGUMENT for a message that does not
parse, instead of gRPC's default (UNKNOWN with a traceback per unary request, UNAVAILABLE for a stream message, which
tells a client to resend the same poison message forever).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from eqface.service.quietlog import QuietLog
from eqface.service.v1 import aggregator_pb2 as pb

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["AggregatorService"]
_quiet = QuietLog(log)


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands in for a request message that did not parse; the handler answers it INVALID_ARGUMENT."""

    message: str


def lenient_deserializer(method: str, cls: type[Message]) -> Callable[[bytes], Any]:
    """``cls.FromString``, but a message that does not parse becomes ``Undecodable`` (logged once per 10 s)."""

    def deserialize(data: bytes) -> Message | Undecodable:
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError) as exc:
            text = f"{method}: the request message ({len(data)} bytes) is not a valid {cls.__name__}: {exc}"
            _quiet.warning(f"undecodable {method}", "%s", text)
            return Undecodable(text)

    return deserialize


def _guard_unary(method: Callable[..., Any]) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await method(request, context)

    return handler


def add_servicer(servicer: Any, server: grpc.aio.Server) -> None:
    """What ``add_AggregatorServiceServicer_to_server`` does, with ``lenient_deserializer`` for every request.

    Stream messages reach the servicer as ``Undecodable`` too; it ends the stream INVALID_ARGUMENT after the answers
    to the earlier messages.
    """
    handlers = {}
    for method in SERVICE.methods:
        request_cls = getattr(pb, method.input_type.name)
        response_cls = getattr(pb, method.output_type.name)
        deserializer = lenient_deserializer(method.name, request_cls)
        behaviour = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            make, guarded = grpc.stream_stream_rpc_method_handler, behaviour
        elif not method.client_streaming and not method.server_streaming:
            make, guarded = grpc.unary_unary_rpc_method_handler, _guard_unary(behaviour)
        else:
            raise ValueError(f"{method.full_name}: only unary and bidirectional methods are expected")
        handlers[method.name] = make(
            guarded, request_deserializer=deserializer, response_serializer=response_cls.SerializeToString
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
