"""Biometric data hygiene on a real server, over every store: the audit log of enrol/delete/reset/template reads,
delete that leaves no copy (store, LRU cache, gallery), and retention at start and periodically."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from eqface.service.caller import LOCAL_CALLER
from eqface.service.client import embedding_bytes, feature_frame
from eqface.service.config import ServiceConfig
from eqface.service.hygiene import DAY_S, AuditConfig, HygieneConfig, RetentionConfig
from eqface.service.store import IdentityRecord, SubjectWrite, open_store
from eqface.service.v1 import aggregator_pb2 as pb
from tests.support.service import (  # noqa: F401  (fixtures)
    aggregator_stub,
    face_stream,
    redis_server,
    serve_in_thread,
    store_url,
    unit,
)

pytestmark = pytest.mark.integration
AUDIT_KEYS = {"time", "principal", "tenant", "action", "target", "outcome"}


def _config(url: str, audit: Path, retention: RetentionConfig = RetentionConfig()) -> ServiceConfig:
    return ServiceConfig(store_url=url, metrics_port=0, hygiene=HygieneConfig(retention, AuditConfig(str(audit))))


def _audit(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _stream(stub, subject: str, seed: int, n: int = 4, first: int = 1) -> None:
    f, q = face_stream(seed, n, low=0.5)
    frames = [feature_frame(subject, first + i, f[i], float(q[i])) for i in range(n)]
    list(stub.StreamFrames(iter([pb.StreamFramesRequest(frames=frames)])))


def test_audit_log_and_delete_that_leaves_no_copy(store_url, tmp_path):  # noqa: F811
    audit = tmp_path / "audit" / "audit.jsonl"
    with serve_in_thread(_config(store_url, audit)) as server, aggregator_stub(server.target) as stub:
        service = server.server.service
        _stream(stub, "s1", 1)
        _stream(stub, "s2", 2)
        template = stub.GetTemplate(pb.GetTemplateRequest(subject_id="s1")).subject.template
        probe = embedding_bytes(unit(np.random.default_rng(3).normal(size=512)))
        stub.Enroll(pb.EnrollRequest(identity_id="alice", display_name="Alice", subject_id="s1"))
        stub.Enroll(pb.EnrollRequest(identity_id="alice", display_name="Alice", embedding=probe, overwrite=True))
        with pytest.raises(grpc.RpcError) as err:
            stub.Enroll(pb.EnrollRequest(identity_id="alice", display_name="Alice", embedding=probe))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        stub.ResetSubject(pb.ResetSubjectRequest(subject_id="s2"))
        assert "s1" in service.engine.cache and len(service.gallery) == 1

        stub.DeleteSubject(pb.DeleteSubjectRequest(subject_id="s1"))
        with pytest.raises(grpc.RpcError) as err:
            stub.DeleteSubject(pb.DeleteSubjectRequest(subject_id="s1"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert stub.RemoveIdentity(pb.RemoveIdentityRequest(identity_id="alice")).gallery_size == 0

        # Gone from the store, the cache and the gallery; the other subject is untouched.
        assert "s1" not in service.engine.cache and "s2" in service.engine.cache
        assert service.store.load_subjects(["s1"]) == {} and set(service.store.load_subjects(["s2"])) == {"s2"}
        assert len(service.gallery) == 0 and service.store.load_gallery()[1] == []
        assert stub.Identify(pb.IdentifyRequest(embedding=probe)).matches == []
        with pytest.raises(grpc.RpcError) as err:
            stub.GetTemplate(pb.GetTemplateRequest(subject_id="s1"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

    entries = _audit(audit)
    assert [(e["action"], e["target"], e["outcome"]) for e in entries] == [
        ("get_template", "s1", "OK"),
        ("enroll", "alice", "OK"),
        ("enroll", "alice", "OK"),
        ("enroll", "alice", "ALREADY_EXISTS"),
        ("reset_subject", "s2", "OK"),
        ("delete_subject", "s1", "OK"),
        ("delete_subject", "s1", "NOT_FOUND"),
        ("remove_identity", "alice", "OK"),
        ("get_template", "s1", "NOT_FOUND"),
    ]
    enrolls = [e for e in entries if e["action"] == "enroll"]
    assert [(e["source"], e["overwrite"]) for e in enrolls] == [("subject_id", False), ("embedding", True)] + [
        ("embedding", False)
    ]
    for e in entries:  # who and when, never what the template is
        assert (e["principal"], e["tenant"]) == (LOCAL_CALLER.principal, LOCAL_CALLER.tenant)
        assert set(e) <= AUDIT_KEYS | {"source", "overwrite"}
        assert abs(time.time() - _timestamp(e["time"])) < 120
    text = audit.read_bytes()
    assert template[:16] not in text and probe[:16] not in text


def _timestamp(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_retention_deletes_at_start_and_periodically(store_url, tmp_path):  # noqa: F811
    """Records older than the retention age are deleted when the server starts, newer ones when they expire."""
    age_s = 1.0
    store = open_store(store_url)
    try:
        store.commit_subjects([SubjectWrite("old", 0, b"x")])
        store.put_identity(IdentityRecord("old-id", "Old", unit(np.ones(512))), overwrite=False)
    finally:
        store.close()
    time.sleep(age_s + 0.1)
    retention = RetentionConfig(subject_days=age_s / DAY_S, identity_days=age_s / DAY_S, interval_s=0.2)
    audit = tmp_path / "audit.jsonl"
    with serve_in_thread(_config(store_url, audit, retention)) as server, aggregator_stub(server.target) as stub:
        service = server.server.service
        assert service.store.load_subjects(["old"]) == {} and service.store.load_gallery()[1] == []  # at start
        _stream(stub, "fresh", 4)
        stub.Enroll(pb.EnrollRequest(identity_id="new-id", embedding=embedding_bytes(unit(np.ones(512)))))
        assert "fresh" in service.engine.cache and len(service.gallery) == 1
        deadline = time.monotonic() + 10
        while service.store.load_subjects(["fresh"]) or len(service.gallery):
            assert time.monotonic() < deadline, "retention did not delete the expired subject"
            time.sleep(0.05)
        time.sleep(0.1)  # the sweep forgets each batch right after deleting it
        assert "fresh" not in service.engine.cache
        with pytest.raises(grpc.RpcError) as err:
            stub.GetTemplate(pb.GetTemplateRequest(subject_id="fresh"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        _stream(stub, "fresh", 5)  # a deleted subject starts again from nothing
        assert stub.GetTemplate(pb.GetTemplateRequest(subject_id="fresh")).subject.frame_count == 4

    purges = [e for e in _audit(audit) if e["action"].startswith("retention_purge")]
    assert purges[:2] == [
        {**purges[0], "action": "retention_purge_subjects", "ids": ["old"], "principal": "system:retention"},
        {**purges[1], "action": "retention_purge_identities", "ids": ["old-id"], "principal": "system:retention"},
    ]
    assert any(e["ids"] == ["fresh"] for e in purges[2:]) and any(e["ids"] == ["new-id"] for e in purges[2:])


def test_retention_is_off_by_default_and_validated():
    assert not ServiceConfig().hygiene.retention.enabled
    with pytest.raises(ValueError, match="identity_days"):
        replace(RetentionConfig(), identity_days=-1.0)


def test_audit_lines_are_one_json_object_each_even_for_hostile_ids(tmp_path):
    from eqface.service.audit import MAX_TARGET_CHARS, AuditLog

    path = tmp_path / "a.jsonl"
    log = AuditLog(AuditConfig(str(path)))
    log.record(LOCAL_CALLER, "get_template", 'x"\n{"action": "forged"}\x1b[2J', "INVALID_ARGUMENT")
    log.record(LOCAL_CALLER, "delete_subject", "y" * 100_000, "INVALID_ARGUMENT")
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["action"] == "get_template" and first["target"].startswith('x"\n{')
    assert len(second["target"]) == MAX_TARGET_CHARS + 1
