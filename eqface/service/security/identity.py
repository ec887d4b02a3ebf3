"""The one place where a credential becomes a ``Caller``: a verified client certificate or verified token claims.

Client certificates (mutual TLS):
    principal = the subject's Common Name (CN), tenant = its Organization (O), roles = its Organizational Unit (OU)
    values, one role name each ("stream", "read", "admin").
Bearer tokens (JWT, signature and iss/aud/exp/nbf already verified):
    principal = ``sub``, tenant = the ``tenant`` claim, roles = the ``roles`` claim (a list of role names).

A credential without a principal or a tenant, or with a malformed tenant, authenticates nobody. Unknown role names are
ignored (a typo grants less, never more). The tenant ``default`` holds the data of the single-tenant era.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from eqface.service.caller import Caller, Role

TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_ROLES = {role.value: role for role in Role}


class InvalidIdentity(Exception):
    """A verified credential that does not name a usable caller."""


def check_tenant(tenant: str) -> str:
    """Tenant names are 1-63 characters of [a-z0-9._-] starting with a letter or digit (they prefix store keys)."""
    if not isinstance(tenant, str) or not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidIdentity(f"tenant {tenant!r} is not a valid tenant name ([a-z0-9][a-z0-9._-]{{0,62}})")
    return tenant


def roles_of(names: Iterable[Any]) -> frozenset[Role]:
    return frozenset(_ROLES[n] for n in names if isinstance(n, str) and n in _ROLES)


def caller_from_certificate(pem: bytes) -> Caller:
    """The caller a verified client certificate names (CN, O, OU)."""
    subject = x509.load_pem_x509_certificate(pem).subject

    def values(oid: x509.ObjectIdentifier) -> list[str]:
        return [str(a.value) for a in subject.get_attributes_for_oid(oid)]

    names, tenants = values(NameOID.COMMON_NAME), values(NameOID.ORGANIZATION_NAME)
    if len(names) != 1 or len(tenants) != 1:
        raise InvalidIdentity("client certificate needs exactly one CN (principal) and one O (tenant)")
    return Caller(names[0], check_tenant(tenants[0]), roles_of(values(NameOID.ORGANIZATIONAL_UNIT_NAME)))


def caller_from_claims(claims: Mapping[str, Any]) -> Caller:
    """The caller verified token claims name (sub, tenant, roles)."""
    principal, roles = claims.get("sub"), claims.get("roles", [])
    if not isinstance(principal, str) or not principal:
        raise InvalidIdentity("token has no subject (sub)")
    if not isinstance(roles, list):
        raise InvalidIdentity("token's roles claim is not a list")
    return Caller(principal, check_tenant(claims.get("tenant", "")), roles_of(roles))
