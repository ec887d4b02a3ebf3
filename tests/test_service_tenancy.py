"""eqface.service.tenancy: tenant-namespaced store keys; a page of one tenant's ids is one range read."""

from __future__ import annotations

import bisect

import pytest

from eqface.service.errors import InvalidArgument
from eqface.service.inputs import check_id
from eqface.service.tenancy import SEP, keys_of, split_key


def _range(keys: list[str], after: str, limit: int) -> list[str]:
    """What a store's list_subjects does: keys > after in UTF-8 byte order (= code point order), ascending."""
    ordered = sorted(keys, key=lambda k: k.encode())
    start = bisect.bisect_right([k.encode() for k in ordered], after.encode())
    return ordered[start : start + limit]


def _all_pages(keys: list[str], tenant: str, size: int) -> list[str]:
    tk, after, out = keys_of(tenant), "", []
    while True:
        ids = tk.page(_range(keys, tk.after(after), size + 1))
        out += ids[:size]
        if len(ids) <= size:
            return out
        after = ids[size - 1]


def test_default_tenant_keys_are_the_ids_of_the_single_tenant_era():
    assert keys_of("default").key("door-1") == "door-1" and split_key("door-1") == ("default", "door-1")
    assert keys_of("acme").key("door-1") == f"{SEP}acme{SEP}door-1"
    assert split_key(keys_of("acme").key("a/b c")) == ("acme", "a/b c")


def test_pages_list_exactly_each_tenants_own_ids():
    ids = ["a", "ab", "door-1", "~z", "é", "\U0001f600", " lead", "zz"]
    tenants = ["default", "ab", "abc", "a", "z9"]  # "ab" is a prefix of "abc": the separator keeps them apart
    keys = [keys_of(t).key(i) for t in tenants for i in ids[: 3 + len(t)]]
    for tenant in tenants:
        for size in (1, 2, 3, 100):
            assert _all_pages(keys, tenant, size) == sorted(ids[: 3 + len(tenant)], key=str.encode), (tenant, size)
    assert _all_pages(keys, "nobody", 2) == []


def test_no_id_can_spell_another_tenants_key():
    """The separator is a control character, which ids may not contain: no id of the default tenant (or any) can
    equal a key of another."""
    with pytest.raises(InvalidArgument):
        check_id(keys_of("acme").key("x"))


def test_a_crafted_page_token_cannot_leave_the_tenant():
    keys = [keys_of("acme").key("secret"), "mine"]
    default = keys_of("default")
    assert default.page(_range(keys, default.after(SEP), 10)) == ["mine"]  # after '' or SEP: still the floor
    other = keys_of("b")
    assert other.page(_range(keys, other.after(""), 10)) == []
