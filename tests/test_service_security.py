"""eqface.service.security without a server: token verification, the credential → Caller mapping, the role table,
the security settings' rules, and the local CA's files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from eqface.service.caller import Caller, NotAuthenticated, Role, authenticated_as, caller_of
from eqface.service.security.authz import EXEMPT, REQUIRED_ROLE, Denied, authorise
from eqface.service.security.config import SecurityConfig, is_loopback
from eqface.service.security.identity import InvalidIdentity, caller_from_certificate, caller_from_claims
from eqface.service.security.tokens import InvalidToken, TokenVerifier
from eqface.service.v1 import aggregator_pb2 as pb
from tests.support.auth import AUDIENCE, ISSUER, TestAuthority


def _hmac_token(secret: bytes) -> str:
    """An HS256 token built by hand (PyJWT refuses to use a public key as an HMAC secret when signing)."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": "u", "tenant": "t", "iss": ISSUER, "aud": AUDIENCE, "exp": 2**40}
    signing_input = header + b"." + b64(json.dumps(claims).encode())
    return (signing_input + b"." + b64(hmac.new(secret, signing_input, hashlib.sha256).digest())).decode()


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> TestAuthority:
    return TestAuthority(tmp_path_factory.mktemp("auth"))


@pytest.fixture(scope="module")
def verifier(authority: TestAuthority) -> TokenVerifier:
    return TokenVerifier(authority.security(mutual_tls=False))


def test_a_valid_token_names_its_caller(authority, verifier):
    claims = verifier.verify(authority.token("cam-7", "acme", [Role.STREAM]))
    assert caller_from_claims(claims) == Caller("cam-7", "acme", frozenset({Role.STREAM}))


def test_pem_public_keys_verify_like_the_jwks(authority, tmp_path):
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(authority.public_key_pem())
    config = SecurityConfig(
        tls_cert_file="c", tls_key_file="k", jwt_public_key_files=(str(pem),), jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )
    assert TokenVerifier(config).verify(authority.token("u", "t"))["sub"] == "u"


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda a: a.token(expires_in_s=-120), "expired"),
        (lambda a: a.token(audience="someone-else"), "audience"),
        (lambda a: a.token(issuer="https://evil.example"), "issuer"),
        (lambda a: a.token(nbf=int(time.time()) + 600), "not yet valid"),
        (lambda a: a.token(key=ec.generate_private_key(ec.SECP256R1())), "Signature verification failed"),
        (lambda a: "not.a.token", "malformed"),
        (lambda a: jwt.encode({"sub": "u", "iss": ISSUER, "aud": AUDIENCE, "exp": 2**40}, None, "none"), "alg"),
        # algorithm confusion: an HMAC token "signed" with the public key must not pass as that key's signature
        (lambda a: _hmac_token(a.public_key_pem()), "alg"),
    ],
)
def test_bad_tokens_are_refused(authority, verifier, make, says):
    with pytest.raises(InvalidToken, match=f"(?i){says}"):
        verifier.verify(make(authority))


def test_a_token_without_exp_is_refused(authority, verifier):
    token = jwt.encode(
        {"sub": "u", "tenant": "t", "iss": ISSUER, "aud": AUDIENCE}, authority.signing_key, algorithm="ES256"
    )
    with pytest.raises(InvalidToken, match="exp"):
        verifier.verify(token)


@pytest.mark.parametrize(
    ("claims", "says"),
    [
        ({"tenant": "acme"}, "sub"),
        ({"sub": "u"}, "tenant"),
        ({"sub": "u", "tenant": "Acme Corp"}, "tenant"),
        ({"sub": "u", "tenant": "\x1eb\x1e"}, "tenant"),  # the key separator can never be spelled by a credential
        ({"sub": "u", "tenant": "acme", "roles": "admin"}, "roles"),
    ],
)
def test_claims_without_a_usable_caller_are_refused(claims, says):
    with pytest.raises(InvalidIdentity, match=says):
        caller_from_claims(claims)


def test_unknown_role_names_grant_nothing():
    assert caller_from_claims({"sub": "u", "tenant": "t", "roles": ["read", "root", "ADMIN"]}).roles == {Role.READ}


def test_client_certificates_name_their_caller(authority):
    files = authority.ca.client("cam-1", "acme", [Role.STREAM, Role.READ])
    caller = caller_from_certificate(files.cert.read_bytes())
    assert caller == Caller("cam-1", "acme", frozenset({Role.STREAM, Role.READ}))
    server = x509.load_pem_x509_certificate(authority.server.cert.read_bytes())
    assert {str(n) for n in server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value} >= {
        "<DNSName(value='localhost')>",
        "<IPAddress(value=127.0.0.1)>",
    }
    with pytest.raises(InvalidIdentity, match="one O"):
        caller_from_certificate(authority.server.cert.read_bytes())  # a certificate without a tenant


def test_key_files_are_private_and_certificates_short_lived(authority):
    for key in authority.directory.rglob("*-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        serialization.load_pem_private_key(key.read_bytes(), None)
    cert = x509.load_pem_x509_certificate(authority.server.cert.read_bytes())
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 8


def test_every_method_has_a_role_and_stream_read_admin_split_as_documented():
    methods = pb.DESCRIPTOR.services_by_name["AggregatorService"].methods
    names = {f"/eqface.service.v1.AggregatorService/{m.name}" for m in methods}
    assert names <= REQUIRED_ROLE.keys()
    by_role = {role: {m.rsplit("/", 1)[1] for m, r in REQUIRED_ROLE.items() if r is role} for role in Role}
    assert by_role[Role.STREAM] == {"StreamFrames"}
    assert by_role[Role.READ] == {"GetTemplate", "ListSubjects", "Identify", "ListIdentities"}
    assert by_role[Role.ADMIN] == {"Enroll", "RemoveIdentity", "DeleteSubject", "ResetSubject"}
    reader = Caller("r", "t", frozenset({Role.READ}))
    authorise(reader, "/eqface.service.v1.AggregatorService/Identify")
    with pytest.raises(Denied, match="needs the admin role"):
        authorise(reader, "/eqface.service.v1.AggregatorService/Enroll")
    with pytest.raises(Denied, match="not open"):
        authorise(reader, "/some.Other/Method")  # fail closed: a method missing from the table is refused
    assert EXEMPT == {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"}


def test_caller_of_fails_closed_outside_an_authenticated_call():
    with pytest.raises(NotAuthenticated):
        caller_of(None)
    caller = Caller("p", "t", frozenset())
    with authenticated_as(caller):
        assert caller_of(None) is caller
    with pytest.raises(NotAuthenticated):
        caller_of(None)


def test_security_settings_rules():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "[::]", "10.0.0.1", "example.com"))
    SecurityConfig(insecure=True).check_serving("127.0.0.1")
    SecurityConfig(insecure=True, insecure_any_host=True).check_serving("0.0.0.0")
    with pytest.raises(ValueError, match="loopback"):
        SecurityConfig(insecure=True).check_serving("[::]")
    with pytest.raises(ValueError, match="no credentials"):
        SecurityConfig().check_serving("127.0.0.1")
    with pytest.raises(ValueError, match="both a certificate file and a key file"):
        SecurityConfig(tls_cert_file="c")
    with pytest.raises(ValueError, match="travel only over TLS"):
        SecurityConfig(jwks_file="k", jwt_issuer="i", jwt_audience="a")
    with pytest.raises(ValueError, match="not allowed"):
        SecurityConfig(jwt_algorithms=("RS256", "HS256"))
