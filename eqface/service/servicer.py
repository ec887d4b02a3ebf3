"""The gRPC servicer: translates protobuf messages to the domain API of ``AggregatorService`` and back.

The caller's tenant (``caller_of``: from its credentials, never from a request field) goes with every call.
No logic lives here beyond that translation and mapping domain errors to status codes (a call's status, or an
invalid frame's ``google.rpc.Status``); a stream's flow control (read-ahead window, ordering, drain) is
``eqface.service.flow``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from eqface.service import errors
from eqface.service.aggregator import FrameOutcome, FrameStatus
from eqface.service.caller import caller_of
from eqface.service.decoding import Undecodable
from eqface.service.gallery import Match
from eqface.service.inputs import RawFrame
from eqface.service.security.authz import RAW_TEMPLATE_ROLE
from eqface.service.service import AggregatorService, MessageResult, StreamRequest, TemplateSource
from eqface.service.state import SubjectRecord
from eqface.service.v1 import aggregator_pb2 as pb
from eqface.service.v1 import aggregator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
R = TypeVar("R")

CODES: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}
_STATUS = {
    FrameStatus.SEEDED: pb.FRAME_STATUS_SEEDED,
    FrameStatus.ACCEPTED: pb.FRAME_STATUS_ACCEPTED,
    FrameStatus.RESEEDED: pb.FRAME_STATUS_RESEEDED,
    FrameStatus.REJECTED_QUALITY: pb.FRAME_STATUS_REJECTED_QUALITY,
    FrameStatus.REJECTED_SIMILARITY: pb.FRAME_STATUS_REJECTED_SIMILARITY,
    FrameStatus.DUPLICATE: pb.FRAME_STATUS_DUPLICATE,
    FrameStatus.INVALID: pb.FRAME_STATUS_INVALID,
}


def status_code(error: BaseException) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in CODES:
            return CODES[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def frame_error_code(outcome: FrameOutcome) -> int:
    """The google.rpc.Code of an invalid frame: its validation error's code; INVALID_ARGUMENT when the frame failed
    without one (a ValueError of the QWFA update, e.g. a stored template of another dimension).

    grpc.StatusCode's numbers are google.rpc.Code's, so the call-level and per-frame codes agree.
    """
    code = grpc.StatusCode.INVALID_ARGUMENT if outcome.error is None else status_code(outcome.error)
    return code.value[0]


async def abort(context: grpc.aio.ServicerContext, error: errors.ServiceError) -> None:
    """Ends the call with the error's status; a rate limit also sends its retry hint as ``grpc-retry-pushback-ms``
    (the trailer gRPC's retry policy honours)."""
    if isinstance(error, errors.RateLimited):
        context.set_trailing_metadata((("grpc-retry-pushback-ms", str(int(error.retry_after_s * 1000) + 1)),))
    await context.abort(status_code(error), str(error))


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _unary(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Turns a domain error into the call's status (with its message), and a bug into INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: AggregatorServicer, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await method(self, request, context)
        except errors.ServiceError as exc:
            await abort(context, exc)
        except Exception:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__} failed; see the server log")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


def _audited(action: str, target: str, **details: Callable[[Any], Any]) -> Callable:
    """Writes one audit line per call (``eqface.service.audit``): the caller, ``action``, the request's ``target``
    field, the outcome (OK or the status the call ends with) and ``details`` computed from the request."""

    def decorate(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        @functools.wraps(method)
        async def wrapper(self: AggregatorServicer, request: Any, context: Any) -> R:
            outcome = "INTERNAL"
            try:
                response = await method(self, request, context)
                outcome = "OK"
                return response
            except errors.ServiceError as exc:
                outcome = status_code(exc).name
                raise
            finally:
                extra = {key: detail(request) for key, detail in details.items()}
                caller = caller_of(context)
                self.service.audit.record(caller, action, getattr(request, target), outcome, **extra)

        return wrapper

    return decorate


class AggregatorServicer(pb_grpc.AggregatorServiceServicer):
    def __init__(self, service: AggregatorService) -> None:
        self.service = service

    async def StreamFrames(
        self, request_iterator: AsyncIterator[pb.StreamFramesRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamFramesResponse]:
        tenant = caller_of(context).tenant
        requests = _stream_requests(request_iterator)
        try:
            async with self.service.stream(
                requests, _deadline(context), tenant=tenant, connection=context.peer()
            ) as answers:
                async for result in answers:
                    yield _response(result)
        except errors.ServiceError as exc:
            await abort(context, exc)

    @_unary
    @_audited("get_template", "subject_id")
    async def GetTemplate(self, request: pb.GetTemplateRequest, context: Any) -> pb.GetTemplateResponse:
        caller = caller_of(context)
        record = await self.service.get_subject(request.subject_id, tenant=caller.tenant)
        # the template itself is biometric data: only for RAW_TEMPLATE_ROLE; READ sees the counters
        raw = RAW_TEMPLATE_ROLE in caller.roles
        return pb.GetTemplateResponse(subject=_subject_state(record, with_template=raw))

    @_unary
    @_audited("reset_subject", "subject_id")
    async def ResetSubject(self, request: pb.ResetSubjectRequest, context: Any) -> pb.ResetSubjectResponse:
        tenant = caller_of(context).tenant
        record = await self.service.reset_subject(request.subject_id, _deadline(context), tenant=tenant)
        return pb.ResetSubjectResponse(subject=_subject_state(record))

    @_unary
    @_audited("delete_subject", "subject_id")
    async def DeleteSubject(self, request: pb.DeleteSubjectRequest, context: Any) -> pb.DeleteSubjectResponse:
        await self.service.delete_subject(request.subject_id, _deadline(context), tenant=caller_of(context).tenant)
        return pb.DeleteSubjectResponse()

    @_unary
    async def ListSubjects(self, request: pb.ListSubjectsRequest, context: Any) -> pb.ListSubjectsResponse:
        tenant = caller_of(context).tenant
        ids, token = await self.service.list_subjects(request.page_size, request.page_token, tenant=tenant)
        return pb.ListSubjectsResponse(subject_ids=ids, next_page_token=token)

    @_unary
    @_audited("enroll", "identity_id", overwrite=lambda r: r.overwrite, source=lambda r: r.WhichOneof("source"))
    async def Enroll(self, request: pb.EnrollRequest, context: Any) -> pb.EnrollResponse:
        source = _source(request, request.WhichOneof("source"))
        size, qualities = await self.service.enroll(
            request.identity_id,
            request.display_name,
            source,
            request.overwrite,
            _deadline(context),
            tenant=caller_of(context).tenant,
        )
        identity = pb.Identity(identity_id=request.identity_id, display_name=request.display_name)
        return pb.EnrollResponse(identity=identity, gallery_size=size, image_qualities=qualities)

    @_unary
    async def Identify(self, request: pb.IdentifyRequest, context: Any) -> pb.IdentifyResponse:
        source = _source(request, request.WhichOneof("probe"))
        matches, size = await self.service.identify(source, request.top_k, tenant=caller_of(context).tenant)
        return pb.IdentifyResponse(matches=[_match(m) for m in matches], gallery_size=size)

    @_unary
    @_audited("remove_identity", "identity_id")
    async def RemoveIdentity(self, request: pb.RemoveIdentityRequest, context: Any) -> pb.RemoveIdentityResponse:
        tenant = caller_of(context).tenant
        size = await self.service.remove_identity(request.identity_id, _deadline(context), tenant=tenant)
        return pb.RemoveIdentityResponse(gallery_size=size)

    @_unary
    async def ListIdentities(self, request: pb.ListIdentitiesRequest, context: Any) -> pb.ListIdentitiesResponse:
        tenant = caller_of(context).tenant
        records, token = await self.service.list_identities(request.page_size, request.page_token, tenant=tenant)
        identities = [pb.Identity(identity_id=r.identity_id, display_name=r.display_name) for r in records]
        return pb.ListIdentitiesResponse(identities=identities, next_page_token=token)


async def _stream_requests(requests: AsyncIterator[Any]) -> AsyncIterator[StreamRequest]:
    async for request in requests:
        if isinstance(request, Undecodable):
            raise errors.InvalidArgument(request.message)
        frames = [_raw_frame(f) for f in request.frames]
        yield StreamRequest(frames, request.top_k, _payload_bytes(frames))


def _payload_bytes(frames: list[RawFrame]) -> int:
    return sum(len(f.subject_id) + len(f.image or f.embedding or b"") for f in frames)


def _raw_frame(frame: pb.Frame) -> RawFrame:
    kind = frame.WhichOneof("content")
    if kind == "features":
        features = frame.features
        return RawFrame(frame.subject_id, frame.sequence, embedding=features.embedding, quality=features.quality)
    if kind == "image":
        return RawFrame(frame.subject_id, frame.sequence, image=frame.image)
    return RawFrame(frame.subject_id, frame.sequence)


def _source(request: pb.EnrollRequest | pb.IdentifyRequest, kind: str | None) -> TemplateSource:
    if kind == "subject_id":
        return TemplateSource(subject_id=request.subject_id)
    if kind == "images":
        return TemplateSource(images=tuple(request.images.images))
    if kind == "embedding":
        return TemplateSource(embedding=request.embedding)
    return TemplateSource()


def _add_frame_result(results: Any, o: FrameOutcome) -> None:
    # results.add() builds the message in place: half the cost of constructing it and copying it into the list.
    invalid = o.status is FrameStatus.INVALID
    result = results.add(
        subject_id=o.subject_id,
        sequence=o.sequence,
        status=_STATUS[o.status],
        accepted=o.status.merged,
        detail="" if invalid else o.detail,
        quality=o.quality,
        s_sum=o.s_sum,
        frame_count=o.frames,
        accepted_count=o.accepted,
        last_sequence=o.last_sequence,
    )
    if o.similarity is not None:
        result.similarity = o.similarity
    if invalid:  # the reason travels as a google.rpc.Status: code + message, like a failed call's
        error = result.error
        error.code = frame_error_code(o)
        error.message = o.detail


def _response(result: MessageResult) -> pb.StreamFramesResponse:
    response = pb.StreamFramesResponse()
    results = response.results
    for outcome in result.outcomes:
        _add_frame_result(results, outcome)
    for sid, matches in result.matches:
        response.matches.add(subject_id=sid, matches=[_match(m) for m in matches])
    return response


def _match(m: Match) -> pb.Match:
    return pb.Match(identity_id=m.identity_id, score=m.score, display_name=m.display_name)


def _subject_state(record: SubjectRecord, with_template: bool = True) -> pb.SubjectState:
    agg = record.aggregate
    template = agg.template if with_template else None
    return pb.SubjectState(
        subject_id=record.subject_id,
        template=b"" if template is None else template.astype("<f4").tobytes(),
        dimension=record.dimension,
        s_sum=agg.s_sum,
        frame_count=agg.frames,
        accepted_count=agg.accepted,
        last_sequence=record.last_sequence,
        provisional=agg.provisional,
    )
