"""Tenant namespaces of subject and identity ids: the one layer where a caller's id becomes a store key and back.

Everything below the service's domain API (engine, caches, group commit, stores, gallery snapshot) sees only keys:

- the ``default`` tenant's key is the id itself: the data of the single-tenant era belongs to it, unchanged;
- another tenant's key is ``SEP + tenant + SEP + id``.

``SEP`` is a control character, which ``inputs.check_id`` never lets into an id, so no id of one tenant can spell a
key of another, and it sorts below every printable character: all non-default keys form one block in front of the
default tenant's, each tenant's keys a contiguous run inside it. A page of one tenant's ids is therefore one range
read of the store, and a subject of another tenant is a key miss exactly like a subject that does not exist.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from eqface.service.caller import DEFAULT_TENANT

SEP = "\x1e"  # ASCII record separator: not printable, below " "
_DEFAULT_FLOOR = SEP + "\x7f"  # above every SEP + tenant key (tenant names are [a-z0-9._-]), below every printable id


@dataclass(frozen=True)
class TenantKeys:
    """Maps one tenant's ids to store keys and back."""

    tenant: str
    prefix: str

    def key(self, id_: str) -> str:
        return self.prefix + id_

    def id(self, key: str) -> str:
        return key[len(self.prefix) :]

    def owns(self, key: str) -> bool:
        return key.startswith(self.prefix) if self.prefix else not key.startswith(SEP)

    def after(self, id_: str) -> str:
        """The store's ``after`` bound for a page of this tenant's ids that starts after ``id_`` ('' for the first)."""
        return self.prefix + id_ if self.prefix else max(id_, _DEFAULT_FLOOR)

    def page(self, keys: list[str]) -> list[str]:
        """This tenant's ids among a range read that started at ``after``: its leading keys this tenant owns."""
        out = []
        for key in keys:
            if not self.owns(key):
                break  # the run of this tenant's keys ended
            out.append(self.id(key))
        return out


@functools.lru_cache(maxsize=4096)
def keys_of(tenant: str) -> TenantKeys:
    if not tenant or SEP in tenant:
        raise ValueError(f"invalid tenant {tenant!r}")
    return TenantKeys(tenant, "" if tenant == DEFAULT_TENANT else f"{SEP}{tenant}{SEP}")


def split_key(key: str) -> tuple[str, str]:
    """(tenant, id) of a store key."""
    if not key.startswith(SEP):
        return DEFAULT_TENANT, key
    tenant, _, id_ = key[1:].partition(SEP)
    return tenant, id_
