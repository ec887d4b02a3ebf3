"""Credentials for tests of the authenticated aggregator: a local CA (server and client certificates) and a token
issuer (an EC key whose public half the server trusts, as a PEM file and as a JWKS)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from eqface.service.caller import Role
from eqface.service.security.config import SecurityConfig
from eqface.service.security.pki import CertFiles, LocalCA
from eqface.service.security.tls import channel_credentials

ISSUER = "https://issuer.eqface.test"
AUDIENCE = "eqface-aggregator"
ALL_ROLES = frozenset(Role)


class TestAuthority:
    """Everything a TLS test needs, written under ``directory``."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.ca = LocalCA(self.directory / "pki")
        self.server = self.ca.server()
        self.signing_key = ec.generate_private_key(ec.SECP256R1())
        self.jwks_file = self.directory / "jwks.json"
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.signing_key.public_key()))
        self.jwks_file.write_text(json.dumps({"keys": [{**jwk, "kid": "test-1", "alg": "ES256", "use": "sig"}]}))
        self._clients: dict[tuple[str, str, frozenset[Role]], CertFiles] = {}

    def security(self, *, mutual_tls: bool = True, tokens: bool = True, **overrides: object) -> SecurityConfig:
        values: dict[str, object] = {"tls_cert_file": str(self.server.cert), "tls_key_file": str(self.server.key)}
        if mutual_tls:
            values["client_ca_file"] = str(self.ca.cert_file)
        if tokens:
            values.update(jwks_file=str(self.jwks_file), jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
        return SecurityConfig(**{**values, **overrides})  # type: ignore[arg-type]

    def server_args(self) -> list[str]:
        """The same as ``security()`` as command-line flags."""
        return [
            *("--tls-cert", str(self.server.cert), "--tls-key", str(self.server.key)),
            *("--tls-client-ca", str(self.ca.cert_file), "--jwks", str(self.jwks_file)),
            *("--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE),
        ]

    def client_cert(self, principal: str, tenant: str, roles: Iterable[Role]) -> CertFiles:
        key = (principal, tenant, frozenset(roles))
        if key not in self._clients:
            stem = f"client-{principal}-{tenant}-{'-'.join(sorted(r.value for r in key[2])) or 'none'}"
            self._clients[key] = self.ca.client(principal, tenant, key[2], stem=stem)
        return self._clients[key]

    def credentials(
        self, principal: str = "tester", tenant: str = "default", roles: Iterable[Role] = ALL_ROLES
    ) -> grpc.ChannelCredentials:
        """Mutual TLS as a client certificate naming (principal, tenant, roles)."""
        files = self.client_cert(principal, tenant, roles)
        return channel_credentials(self.ca.cert_file, files.cert, files.key)

    def token(
        self,
        sub: str = "token-user",
        tenant: str = "default",
        roles: Iterable[Role] = ALL_ROLES,
        *,
        expires_in_s: float = 300,
        audience: str = AUDIENCE,
        issuer: str = ISSUER,
        key: ec.EllipticCurvePrivateKey | None = None,
        **claims: object,
    ) -> str:
        now = time.time()
        payload = {"sub": sub, "tenant": tenant, "roles": [r.value for r in roles], "iss": issuer, "aud": audience}
        payload.update(iat=int(now), exp=int(now + expires_in_s), **claims)
        return jwt.encode(payload, key or self.signing_key, algorithm="ES256", headers={"kid": "test-1"})

    def token_credentials(self, token: str) -> grpc.ChannelCredentials:
        """TLS (server verified by the CA, no client certificate) plus the bearer token."""
        path = self.directory / f"token-{abs(hash(token))}.jwt"
        path.write_text(token)
        return channel_credentials(self.ca.cert_file, token_file=path)

    def public_key_pem(self) -> bytes:
        return self.signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
