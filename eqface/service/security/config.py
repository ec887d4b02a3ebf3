"""The aggregator's security settings: transport (TLS, mutual TLS or explicit plaintext) and bearer-token checks.

Only file paths are configured, never secret values: keys, certificates and key sets are read from files (a
Kubernetes Secret mounted as files, or the files ``eqface stack`` generates).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# Asymmetric algorithms only: a verifier that holds public keys must never accept an HMAC token (whose "secret" would
# be the public key itself) nor "none".
ALLOWED_JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


@dataclass(frozen=True)
class SecurityConfig:
    """How callers are authenticated.

    Attributes:
        tls_cert_file, tls_key_file: the server's certificate chain and private key (PEM); TLS on when set.
        client_ca_file: CA bundle (PEM) for client certificates; when set every connection must present a
            certificate it signed (mutual TLS) and the caller is read from that certificate (``identity``).
        jwks_file: a JSON Web Key Set of the token issuers' public keys.
        jwt_public_key_files: PEM public keys, an alternative or addition to ``jwks_file``.
        jwt_issuer, jwt_audience: the ``iss`` and ``aud`` every token must carry (both required with tokens).
        jwt_algorithms: the accepted signature algorithms (asymmetric only, never "none").
        jwt_leeway_s: clock skew allowed on ``exp`` and ``nbf``.
        insecure: plaintext and no authentication (every caller is the default tenant with every role); only when
            asked for explicitly, and only on a loopback host unless ``insecure_any_host``.
        insecure_any_host: allows ``insecure`` on a non-loopback address (a second explicit choice).
        reflection: serve gRPC server reflection (off by default: it lists the API to anyone who connects).
        health_port: a plaintext listener serving only grpc.health.v1 (no auth; it reveals SERVING or not), for
            Kubernetes gRPC probes, which cannot use TLS; 0 disables it.
    """

    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    client_ca_file: str | None = None
    jwks_file: str | None = None
    jwt_public_key_files: tuple[str, ...] = ()
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    jwt_leeway_s: float = 30.0
    insecure: bool = False
    insecure_any_host: bool = False
    reflection: bool = False
    health_port: int = 0

    def __post_init__(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("TLS needs both a certificate file and a key file (--tls-cert and --tls-key)")
        bad = [a for a in self.jwt_algorithms if a not in ALLOWED_JWT_ALGORITHMS]
        if bad or not self.jwt_algorithms:
            raise ValueError(
                f"jwt algorithms {bad or '(none)'} not allowed; use some of {', '.join(sorted(ALLOWED_JWT_ALGORITHMS))}"
            )
        if self.tokens and not (self.jwt_issuer and self.jwt_audience):
            raise ValueError("bearer tokens need an expected issuer and audience (--jwt-issuer, --jwt-audience)")
        if self.insecure and (self.tls or self.client_ca_file or self.tokens):
            raise ValueError("--insecure turns TLS and authentication off; do not combine it with credentials")
        if self.client_ca_file and not self.tls:
            raise ValueError("client certificates (--tls-client-ca) need TLS (--tls-cert, --tls-key)")
        if self.tokens and not self.tls:
            raise ValueError("bearer tokens travel only over TLS (--tls-cert, --tls-key)")
        if self.jwt_leeway_s < 0:
            raise ValueError(f"jwt leeway must be >= 0, got {self.jwt_leeway_s}")
        if not 0 <= self.health_port <= 65535:
            raise ValueError(f"health_port must be in [0, 65535], got {self.health_port}")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def mutual_tls(self) -> bool:
        return bool(self.client_ca_file)

    @property
    def tokens(self) -> bool:
        return bool(self.jwks_file or self.jwt_public_key_files)

    def check_serving(self, host: str) -> None:
        """Raises ValueError, saying what to pass, unless callers will be authenticated or insecure was asked for
        on an allowed host."""
        if self.insecure:
            if not (self.insecure_any_host or is_loopback(host)):
                raise ValueError(
                    f"--insecure serves plaintext without authentication; it binds only a loopback host, not {host!r} "
                    "(use --host 127.0.0.1, or add --insecure-any-host if the network is trusted)"
                )
            return
        if not self.tls:
            raise ValueError(
                "no credentials: pass --tls-cert and --tls-key with --tls-client-ca (mutual TLS) and/or "
                "--jwks/--jwt-public-key with --jwt-issuer and --jwt-audience (bearer tokens); or --insecure for "
                "plaintext without authentication on loopback"
            )
        if not (self.mutual_tls or self.tokens):
            raise ValueError(
                "TLS without a way to authenticate callers: add --tls-client-ca (client certificates) and/or "
                "--jwks/--jwt-public-key (bearer tokens)"
            )


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (bracketed or not) and localhost."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
