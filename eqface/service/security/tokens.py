"""Bearer-token verification: signed JWTs checked against a configured key set (JWKS file and/or PEM public keys).

Checked on every token: the signature with one of the configured keys (by ``kid`` when the token names one), an
algorithm from the pinned list, ``exp`` (required), ``nbf`` when present, ``iss`` and ``aud``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from eqface.service.security.config import SecurityConfig


class InvalidToken(Exception):
    """The token is malformed, unsigned by a configured key, expired, not yet valid, or for another issuer/audience."""


class TokenVerifier:
    """Verifies bearer tokens; keys are read once from the configured files."""

    def __init__(self, config: SecurityConfig) -> None:
        self.issuer, self.audience = config.jwt_issuer, config.jwt_audience
        self.algorithms = list(config.jwt_algorithms)
        self.leeway = config.jwt_leeway_s
        self._by_kid: dict[str, Any] = {}
        self._keys: list[Any] = []
        if config.jwks_file:
            for key in _read_jwks(Path(config.jwks_file)):
                self._keys.append(key.key)
                if key.key_id:
                    self._by_kid[key.key_id] = key.key
        for path in config.jwt_public_key_files:
            self._keys.append(_read_public_key(Path(path)))
        if not self._keys:
            raise ValueError("no public keys in the configured key set")

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; raises InvalidToken."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        candidates = [self._by_kid[kid]] if kid in self._by_kid else self._keys
        error: jwt.PyJWTError | None = None
        for key in candidates:
            try:
                return jwt.decode(
                    token,
                    key,
                    algorithms=self.algorithms,
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway,
                    options={"require": ["exp", "iss", "aud", "sub"]},
                )
            except jwt.InvalidSignatureError as exc:
                error = exc  # another key may have signed it
            except jwt.PyJWTError as exc:
                raise InvalidToken(str(exc)) from None
        raise InvalidToken(str(error) if error else "no key matches the token")


def _read_jwks(path: Path) -> list[jwt.PyJWK]:
    try:
        data = json.loads(path.read_text())
        return list(jwt.PyJWKSet.from_dict(data).keys)
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise ValueError(f"cannot read the JWKS file {path}: {exc}") from None


def _read_public_key(path: Path) -> Any:
    try:
        return serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the PEM public key {path}: {exc}") from None
