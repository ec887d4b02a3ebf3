"""eqface.service.client.AggregatorClient, the one client of the aggregator (camera uplink, stack demo, tests):
unary calls retried only while the error is transient, the frame stream, against a real server."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from eqface.processes import free_port
from eqface.service.caller import Role
from eqface.service.client import (
    CHANNEL_OPTIONS,
    MAX_MESSAGE_BYTES,
    AggregatorClient,
    ClientAuth,
    feature_frame,
    template_of,
)
from eqface.service.config import ServiceConfig
from eqface.service.v1 import aggregator_pb2 as pb
from tests.support.auth import TestAuthority
from tests.support.service import ServerProcess, face_stream, serve_in_thread

pytestmark = pytest.mark.integration


def test_channel_options_find_a_restarted_server_fast_and_carry_large_messages():
    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.max_reconnect_backoff_ms"] <= 1000
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == MAX_MESSAGE_BYTES


def test_stream_and_unary_calls_against_a_real_server(tmp_path):
    features, qualities = face_stream(seed=1, n=4)
    frames = [feature_frame("s1", i + 1, f, float(q)) for i, (f, q) in enumerate(zip(features, qualities))]
    with serve_in_thread(ServiceConfig(store_url=f"sqlite:///{tmp_path}/c.db", metrics_port=0)) as server:
        with AggregatorClient(server.target) as client:
            responses = list(client.stream_frames([pb.StreamFramesRequest(frames=frames)], timeout_s=30))
            assert [r.sequence for r in responses[0].results] == [1, 2, 3, 4]
            state = client.call("GetTemplate", pb.GetTemplateRequest(subject_id="s1")).subject
            assert state.frame_count == 4 and template_of(state).shape == features.shape[1:]


def test_an_error_that_retrying_cannot_fix_is_raised_at_once(tmp_path):
    with serve_in_thread(ServiceConfig(store_url=f"sqlite:///{tmp_path}/c.db", metrics_port=0)) as server:
        with AggregatorClient(server.target, reconnect_timeout_s=30) as client:
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                client.call("GetTemplate", pb.GetTemplateRequest(subject_id="nobody"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() - t0 < 5


def test_unreachable_gives_up_after_the_reconnect_timeout():
    with AggregatorClient(f"127.0.0.1:{free_port()}", reconnect_timeout_s=1.0) as client:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            client.call("ListSubjects", pb.ListSubjectsRequest(), timeout_s=0.5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert 0.2 < time.monotonic() - t0 < 1.0 + 2  # retried (first backoff 0.2 s), never slept past the timeout


def test_a_call_waits_for_a_server_that_comes_up_late(tmp_path):
    server = ServerProcess(["--store", f"sqlite:///{tmp_path}/late.db", "--metrics-port", "0"], tmp_path / "s.log")
    starter = threading.Timer(1.0, server.start)
    with AggregatorClient(server.target, reconnect_timeout_s=60) as client:
        starter.start()
        try:
            response = client.call("ListSubjects", pb.ListSubjectsRequest(), timeout_s=2)
            assert list(response.subject_ids) == []
        finally:
            starter.join()
            server.kill()


def test_client_auth_files_give_mutual_tls_or_a_token(tmp_path):
    """ClientAuth (file paths, JSON round trip as the stack's state file keeps it) against a TLS server; a token file
    is sent as the bearer token."""
    authority = TestAuthority(tmp_path / "auth")
    config = ServiceConfig(store_url=f"sqlite:///{tmp_path}/t.db", metrics_port=0)
    cert = authority.client_cert("cam", "acme", {Role.STREAM, Role.READ})
    mtls = ClientAuth(str(authority.ca.cert_file), str(cert.cert), str(cert.key))
    token_file = tmp_path / "token.jwt"
    token_file.write_text(authority.token("svc", "acme", {Role.READ}) + "\n")
    bearer = ClientAuth(ca_file=str(authority.ca.cert_file), token_file=str(token_file))
    assert ClientAuth.from_json(mtls.to_json()) == mtls and ClientAuth.from_json({}) is None
    features, qualities = face_stream(seed=2, n=2)
    frames = [feature_frame("s", i + 1, f, float(q)) for i, (f, q) in enumerate(zip(features, qualities))]
    with serve_in_thread(config, authority=authority, mutual_tls=False) as server:
        with AggregatorClient(server.target, auth=bearer) as client:
            assert list(client.call("ListSubjects", pb.ListSubjectsRequest()).subject_ids) == []
    with serve_in_thread(config, authority=authority) as server:
        with AggregatorClient(server.target, auth=mtls) as client:
            list(client.stream_frames([pb.StreamFramesRequest(frames=frames)], timeout_s=30))
            assert list(client.call("ListSubjects", pb.ListSubjectsRequest()).subject_ids) == ["s"]
    with pytest.raises(ValueError, match="both its certificate and its key"):
        ClientAuth(cert_file=str(cert.cert)).credentials()
