"""gRPC TLS credentials from PEM files: the server's (with client-certificate verification for mutual TLS) and a
client's (CA to verify the server, optional client certificate, optional bearer token)."""

from __future__ import annotations

from pathlib import Path

import grpc

from eqface.service.security.config import SecurityConfig


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror}") from None


def server_credentials(config: SecurityConfig) -> grpc.ServerCredentials:
    """TLS with the configured certificate; with a client CA, client certificates are required and verified."""
    pair = (_read(config.tls_key_file, "TLS key"), _read(config.tls_cert_file, "TLS certificate"))  # type: ignore[arg-type]
    ca = _read(config.client_ca_file, "client CA") if config.client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    token_file: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """A client's TLS credentials: the CA that signed the server's certificate (None: the system's roots), a client
    certificate and key for mutual TLS, and/or a file holding a bearer token (sent with every call)."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("a client certificate needs both its certificate and its key file")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "CA certificate") if ca_file else None,
        private_key=_read(key_file, "client key") if key_file else None,
        certificate_chain=_read(cert_file, "client certificate") if cert_file else None,
    )
    if token_file:
        token = _read(token_file, "token file").decode().strip()
        if not token:
            raise ValueError(f"the token file {token_file} is empty")
        call = grpc.access_token_call_credentials(token)
        credentials = grpc.composite_channel_credentials(credentials, call)
    return credentials
