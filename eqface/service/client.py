"""The one client of the aggregation service: a channel with the options every caller needs (fast reconnects, large
messages, optional credentials), unary calls retried while the aggregator is unreachable, the frame stream, and
helpers that build frames and read templates in the wire format.

    auth = ClientAuth(ca_file="ca.pem", cert_file="client.pem", key_file="client-key.pem")  # mutual TLS
    with AggregatorClient("127.0.0.1:50051", auth=auth, reconnect_timeout_s=60) as client:
        client.enroll("alice", "Alice", images)
        for response in client.stream_frames(requests):
            ...
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import grpc
import numpy as np

from eqface.service.security.tls import channel_credentials
from eqface.service.v1 import aggregator_pb2 as pb
from eqface.service.v1 import aggregator_pb2_grpc

# Status codes after which the same request may succeed on a later try (the aggregator restarts, the network drops).
RETRYABLE = frozenset({"UNAVAILABLE", "UNKNOWN", "INTERNAL", "ABORTED", "DEADLINE_EXCEEDED"})
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # find a restarted aggregator within a second (gRPC's default reconnect backoff grows to two minutes)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
_FIRST_BACKOFF_S, _MAX_BACKOFF_S = 0.2, 2.0
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


def is_retryable(error: grpc.RpcError) -> bool:
    return error.code().name in RETRYABLE


def open_channel(target: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A channel to the aggregator at ``host:port``: TLS when ``credentials`` are given, plaintext otherwise."""
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


@dataclass(frozen=True)
class ClientAuth:
    """How a client authenticates to a TLS aggregator, as file paths (never secret values): the CA that signed the
    server's certificate (None: the system's roots), a client certificate and key (mutual TLS), and/or a file holding
    a bearer token."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token_file: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self.ca_file, self.cert_file, self.key_file, self.token_file)

    def to_json(self) -> dict[str, str | None]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, str | None] | None) -> ClientAuth | None:
        return cls(**d) if d else None


class AggregatorClient:
    """A channel and stub to one aggregator; a context manager that closes the channel.

    Args:
        target: ``host:port``.
        auth: TLS credentials as files (``ClientAuth``); None (and no ``credentials``) for plaintext, which only an
            ``--insecure`` aggregator accepts.
        credentials: ready ``grpc.ChannelCredentials`` instead of ``auth``.
        reconnect_timeout_s: how long unary calls are retried (backoff 0.2 s to 2 s) while the error is transient;
            0 raises the first error.
    """

    def __init__(
        self,
        target: str,
        *,
        auth: ClientAuth | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        reconnect_timeout_s: float = 0.0,
    ) -> None:
        if auth is not None:
            if credentials is not None:
                raise ValueError("pass auth or credentials, not both")
            credentials = auth.credentials()
        self.target = target
        self.reconnect_timeout_s = reconnect_timeout_s
        self.channel = open_channel(target, credentials)
        self.stub = aggregator_pb2_grpc.AggregatorServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> AggregatorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, method: str, request, timeout_s: float = 10.0):
        """``AggregatorService.<method>(request)``, retried with backoff for ``reconnect_timeout_s`` while transient."""
        deadline = time.monotonic() + self.reconnect_timeout_s
        backoff = _FIRST_BACKOFF_S
        while True:
            try:
                return getattr(self.stub, method)(request, timeout=timeout_s)
            except grpc.RpcError as exc:
                if not is_retryable(exc) or time.monotonic() + backoff > deadline:
                    raise
            time.sleep(backoff)
            backoff = min(2 * backoff, _MAX_BACKOFF_S)

    def enroll(
        self,
        identity_id: str,
        display_name: str,
        images: Sequence[bytes],
        *,
        overwrite: bool = True,
        timeout_s: float = 30.0,
    ) -> pb.EnrollResponse:
        """Enrolls ``identity_id`` from encoded face images (the service measures each image's quality)."""
        request = pb.EnrollRequest(
            identity_id=identity_id, display_name=display_name, images=pb.ImageSet(images=images), overwrite=overwrite
        )
        return self.call("Enroll", request, timeout_s)

    def stream_frames(self, requests: Iterable[pb.StreamFramesRequest], timeout_s: float | None = None):
        """Opens ``StreamFrames``: the returned call yields one response per request and has ``cancel()``.

        Not retried: a caller that must lose no frame resends the unanswered ones on a new call
        (``eqface.camera.uplink``); the service answers frames it had already applied DUPLICATE.
        """
        return self.stub.StreamFrames(iter(requests), timeout=timeout_s)


# ------------------------------------------------------------------------------------------------ wire format
def embedding_bytes(embedding: np.ndarray) -> bytes:
    """The wire format of an embedding: raw little-endian float32."""
    return np.ascontiguousarray(embedding, dtype="<f4").tobytes()


def feature_frame(subject_id: str, sequence: int, embedding: np.ndarray, quality: float) -> pb.Frame:
    features = pb.Features(embedding=embedding_bytes(embedding), quality=quality)
    return pb.Frame(subject_id=subject_id, sequence=sequence, features=features)


def image_frame(subject_id: str, sequence: int, image: bytes) -> pb.Frame:
    return pb.Frame(subject_id=subject_id, sequence=sequence, image=image)


def frame_error(result: pb.FrameResult) -> tuple[grpc.StatusCode, str] | None:
    """A FRAME_STATUS_INVALID frame's google.rpc.Status as (code, message); None for a frame the service used.

    google.rpc.Code's numbers are grpc.StatusCode's, so the code compares with a failed call's ``error.code()``.
    """
    if not result.HasField("error"):
        return None
    return _STATUS_CODES.get(result.error.code, grpc.StatusCode.UNKNOWN), result.error.message


def template_of(state: pb.SubjectState) -> np.ndarray | None:
    """A SubjectState's template as float32 [D], or None when the subject has none."""
    if not state.template:
        return None
    return np.frombuffer(state.template, dtype="<f4").astype(np.float32)
