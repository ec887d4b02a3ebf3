"""The authenticated aggregator over real TLS: unauthenticated and badly authenticated calls are refused
(UNAUTHENTICATED), a missing role is PERMISSION_DENIED, tenants neither see nor guess each other's subjects and
identities, mutual TLS works end to end, data of the single-tenant era belongs to the default tenant, and health stays
reachable without credentials."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2

from eqface.service.caller import Role
from eqface.service.client import embedding_bytes, feature_frame, template_of
from eqface.service.config import ServiceConfig
from eqface.service.security.pki import LocalCA
from eqface.service.security.tls import channel_credentials
from eqface.service.v1 import aggregator_pb2 as pb
from tests.support.auth import TestAuthority
from tests.support.service import ServerThread, aggregator_stub, face_stream, health_status, serve_in_thread

pytestmark = pytest.mark.integration
DIM = 32
ALL, READ, STREAM, ADMIN = frozenset(Role), {Role.READ}, {Role.STREAM}, {Role.ADMIN}


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> TestAuthority:
    return TestAuthority(tmp_path_factory.mktemp("auth"))


def _config(path) -> ServiceConfig:
    return ServiceConfig(store_url=f"sqlite:///{path}", metrics_port=0, embedding_dim=DIM)


@pytest.fixture(scope="module")
def server(authority, tmp_path_factory) -> Iterator[ServerThread]:
    """TLS with bearer tokens (no client CA: with one, gRPC requires a certificate on every connection)."""
    with serve_in_thread(
        _config(tmp_path_factory.mktemp("state") / "s.db"), authority=authority, mutual_tls=False
    ) as s:
        yield s


def _token_stub(server, authority, tenant="default", roles: Iterable[Role] = ALL, **token_args):
    token = authority.token("u", tenant, roles, **token_args)
    return aggregator_stub(server.target, authority.token_credentials(token))


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def _list(stub) -> list[str]:
    return list(stub.ListSubjects(pb.ListSubjectsRequest(), timeout=5).subject_ids)


def _stream(stub, subject: str, n: int, seed: int = 1, first: int = 1) -> list:
    f, q = face_stream(seed, n, DIM)
    frames = [feature_frame(subject, first + i, f[i], float(q[i])) for i in range(n)]
    responses = stub.StreamFrames(iter([pb.StreamFramesRequest(frames=frames)]), timeout=10)
    return [r for response in responses for r in response.results]


def test_calls_without_valid_credentials_are_unauthenticated(server, authority, caplog):
    caplog.set_level(logging.DEBUG)
    no_token = channel_credentials(authority.ca.cert_file)  # TLS, server verified, no credentials
    with aggregator_stub(server.target, no_token) as stub:
        code, details = _code(lambda: _list(stub))
        assert code == grpc.StatusCode.UNAUTHENTICATED and details.startswith("no credentials"), details
        assert _code(lambda: _stream(stub, "s", 1))[0] == grpc.StatusCode.UNAUTHENTICATED
    with aggregator_stub(server.target) as plaintext:  # TLS port: a plaintext client gets no connection
        assert _code(lambda: _list(plaintext))[0] == grpc.StatusCode.UNAVAILABLE
    bad_tokens = {
        "expired": {"expires_in_s": -120},
        "audience": {"audience": "another-service"},
        "issuer": {"issuer": "https://evil.example"},
        "signature": {"key": ec.generate_private_key(ec.SECP256R1())},  # a key the server does not trust
    }
    for says, token_args in bad_tokens.items():
        with _token_stub(server, authority, **token_args) as stub:
            code, details = _code(lambda: _list(stub))
            assert code == grpc.StatusCode.UNAUTHENTICATED and says in details.lower(), details
            assert _code(lambda: _stream(stub, "s", 1))[0] == grpc.StatusCode.UNAUTHENTICATED
    with _token_stub(server, authority, "Not A Tenant") as stub:
        code, details = _code(lambda: _list(stub))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "tenant" in details, details
    assert "Traceback" not in caplog.text  # refusals are one-line debug records, never tracebacks
    # health needs no credentials: on the plaintext health port (Kubernetes probes) ...
    assert health_status(server.health_target) == health_pb2.HealthCheckResponse.SERVING
    # ... and on the TLS port, without a token
    with grpc.secure_channel(server.target, no_token) as channel:
        from grpc_health.v1 import health_pb2_grpc

        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_a_missing_role_is_permission_denied(server, authority):
    with _token_stub(server, authority, "roles", READ) as reader:
        assert _list(reader) == []
        for call in (
            lambda: _stream(reader, "s", 1),
            lambda: reader.DeleteSubject(pb.DeleteSubjectRequest(subject_id="s"), timeout=5),
            lambda: reader.ResetSubject(pb.ResetSubjectRequest(subject_id="s"), timeout=5),
            lambda: reader.Enroll(pb.EnrollRequest(identity_id="x", embedding=b"\0" * 4 * DIM), timeout=5),
            lambda: reader.RemoveIdentity(pb.RemoveIdentityRequest(identity_id="x"), timeout=5),
        ):
            code, details = _code(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED and "role" in details, details
    with _token_stub(server, authority, "roles", STREAM) as camera:
        assert [r.status for r in _stream(camera, "s", 3)][0] == pb.FRAME_STATUS_SEEDED
        assert _code(lambda: _list(camera))[0] == grpc.StatusCode.PERMISSION_DENIED
    with _token_stub(server, authority, "roles", ()) as nobody:
        assert _code(lambda: _stream(nobody, "s", 1))[0] == grpc.StatusCode.PERMISSION_DENIED
    # GetTemplate: READ sees the counters, only ADMIN the biometric template itself
    with _token_stub(server, authority, "roles", READ) as reader:
        state = reader.GetTemplate(pb.GetTemplateRequest(subject_id="s"), timeout=5).subject
        assert state.frame_count == 3 and state.template == b""
    with _token_stub(server, authority, "roles", READ | ADMIN) as admin:
        assert template_of(admin.GetTemplate(pb.GetTemplateRequest(subject_id="s"), timeout=5).subject).shape == (DIM,)


def test_tenants_neither_see_nor_guess_each_others_data(server, authority):
    with _token_stub(server, authority, "tenant-a") as a, _token_stub(server, authority, "tenant-b") as b:
        assert [r.status for r in _stream(a, "shared-name", 4, seed=1)][0] == pb.FRAME_STATUS_SEEDED
        _stream(a, "only-a", 2, seed=2)
        template = template_of(a.GetTemplate(pb.GetTemplateRequest(subject_id="shared-name"), timeout=5).subject)
        a.Enroll(pb.EnrollRequest(identity_id="alice", display_name="Alice", subject_id="shared-name"), timeout=5)

        # B: another tenant's subject is NOT_FOUND exactly like one that never existed (same code, same message form)
        for subject in ("only-a", "never-existed"):
            not_found = (grpc.StatusCode.NOT_FOUND, f"unknown subject {subject!r}")
            for call in (
                lambda: b.GetTemplate(pb.GetTemplateRequest(subject_id=subject), timeout=5),
                lambda: b.DeleteSubject(pb.DeleteSubjectRequest(subject_id=subject), timeout=5),
                lambda: b.ResetSubject(pb.ResetSubjectRequest(subject_id=subject), timeout=5),
                lambda: b.Identify(pb.IdentifyRequest(subject_id=subject), timeout=5),
                lambda: b.Enroll(pb.EnrollRequest(identity_id="x", subject_id=subject), timeout=5),
            ):
                assert _code(call) == not_found
        code, details = _code(lambda: b.RemoveIdentity(pb.RemoveIdentityRequest(identity_id="alice"), timeout=5))
        assert (code, details) == (grpc.StatusCode.NOT_FOUND, "unknown identity 'alice'")
        # B's lists and 1:N search see nothing of A's
        assert _list(b) == []
        assert list(b.ListIdentities(pb.ListIdentitiesRequest(), timeout=5).identities) == []
        found = b.Identify(pb.IdentifyRequest(embedding=embedding_bytes(template)), timeout=5)
        assert (list(found.matches), found.gallery_size) == ([], 0)

        # B's own subject of the same name is a different subject; A's is untouched by it
        assert [r.status for r in _stream(b, "shared-name", 1, seed=9)] == [pb.FRAME_STATUS_SEEDED]
        assert b.GetTemplate(pb.GetTemplateRequest(subject_id="shared-name"), timeout=5).subject.frame_count == 1
        b.DeleteSubject(pb.DeleteSubjectRequest(subject_id="shared-name"), timeout=5)
        state = a.GetTemplate(pb.GetTemplateRequest(subject_id="shared-name"), timeout=5).subject
        assert state.frame_count == 4 and state.subject_id == "shared-name"

        # A sees its own, under its own ids, page by page; its stream is matched against its own gallery
        pages, token = [], ""
        while True:
            page = a.ListSubjects(pb.ListSubjectsRequest(page_size=1, page_token=token), timeout=5)
            pages += page.subject_ids
            token = page.next_page_token
            if not token:
                break
        assert pages == ["only-a", "shared-name"]
        assert [i.identity_id for i in a.ListIdentities(pb.ListIdentitiesRequest(), timeout=5).identities] == ["alice"]
        match = a.Identify(pb.IdentifyRequest(embedding=embedding_bytes(template)), timeout=5)
        assert [m.identity_id for m in match.matches] == ["alice"] and match.gallery_size == 1
        frame = feature_frame("shared-name", 5, template, 0.9)
        (response,) = a.StreamFrames(iter([pb.StreamFramesRequest(frames=[frame])]), timeout=10)
        assert response.results[0].subject_id == "shared-name"
        assert [(m.subject_id, m.matches[0].identity_id) for m in response.matches] == [("shared-name", "alice")]


def test_data_of_the_single_tenant_era_belongs_to_the_default_tenant(tmp_path, authority):
    config = _config(tmp_path / "old.db")
    with serve_in_thread(config) as old, aggregator_stub(old.target) as stub:  # --insecure: the default tenant
        _stream(stub, "legacy", 3)
    with serve_in_thread(config, authority=authority, mutual_tls=False) as new:
        with _token_stub(new, authority, "default") as default:
            assert default.GetTemplate(pb.GetTemplateRequest(subject_id="legacy"), timeout=5).subject.frame_count == 3
            assert _list(default) == ["legacy"]
        with _token_stub(new, authority, "acme") as other:
            assert _list(other) == []


def test_mutual_tls_authenticates_by_certificate(tmp_path, authority):
    """Client certificates required and verified: the happy path (tenant and roles from the certificate), no
    certificate or one from another CA gets no connection, a certificate without a tenant is UNAUTHENTICATED."""
    with serve_in_thread(_config(tmp_path / "m.db"), authority=authority, tokens=False) as s:
        with aggregator_stub(s.target, authority.credentials("cam", "acme", STREAM | READ)) as cam:
            results = _stream(cam, "door", 5)
            assert results[0].status == pb.FRAME_STATUS_SEEDED and results[-1].frame_count == 5
            assert _list(cam) == ["door"]
            assert _code(lambda: cam.DeleteSubject(pb.DeleteSubjectRequest(subject_id="door"), timeout=5))[0] == (
                grpc.StatusCode.PERMISSION_DENIED
            )
        with aggregator_stub(s.target, authority.credentials("ops", "other", ALL)) as other:
            assert _list(other) == []
        stranger = LocalCA(tmp_path / "other-ca").client("mallory", "acme", ALL)
        for credentials in (
            channel_credentials(authority.ca.cert_file),
            channel_credentials(authority.ca.cert_file, stranger.cert, stranger.key),
        ):
            with aggregator_stub(s.target, credentials) as stub:
                assert _code(lambda: _list(stub))[0] == grpc.StatusCode.UNAVAILABLE  # the handshake fails
        nameless = authority.ca.client_for(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]), "nameless")
        with aggregator_stub(
            s.target, channel_credentials(authority.ca.cert_file, nameless.cert, nameless.key)
        ) as stub:
            code, details = _code(lambda: _list(stub))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "tenant" in details, details
