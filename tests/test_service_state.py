"""Aggregation service, pure parts: record codec, per-frame semantics, validation, cache, gallery, config."""

from __future__ import annotations

import numpy as np
import pytest

from eqface.aggregation import PAPER_F_TH, PAPER_S_TH, ProgressiveQWFA, progressive_templates
from eqface.service.aggregator import FrameInput, FrameStatus, apply_frame
from eqface.service.cache import LruCache
from eqface.service.config import ServiceConfig, TritonConfig
from eqface.service.errors import InvalidArgument
from eqface.service.gallery import GalleryIndex
from eqface.service.inputs import (
    check_id,
    check_quality,
    check_sequence,
    decode_page_token,
    encode_page_token,
    page_size,
    parse_embedding,
)
from eqface.service.metrics import ActiveSubjects
from eqface.service.state import AggregationParams, SubjectRecord, decode_record, encode_record, reset_record
from eqface.service.store import IdentityRecord
from eqface.service.thresholds import resolve_thresholds
from tests.support.service import face_stream, unit

PARAMS = AggregationParams(PAPER_F_TH, PAPER_S_TH)


def _record(features: np.ndarray, qualities: np.ndarray, subject: str = "s") -> SubjectRecord:
    record = SubjectRecord(subject, PARAMS.new_aggregate())
    for i, (f, q) in enumerate(zip(features, qualities), start=1):
        apply_frame(record, FrameInput(subject, i, f, float(q)))
    return record


def test_without_flags_or_a_calibrated_model_the_paper_defaults_apply():
    config = ServiceConfig()
    assert (config.f_th, config.s_th) == (None, None)  # no override: the served model's calibration decides
    used = resolve_thresholds(config.f_th, config.s_th, None)
    assert (used.f_th, used.s_th) == (0.5, 0.3) == (PAPER_F_TH, PAPER_S_TH)


def test_record_round_trips_exactly_and_fits_3_kib():
    features, qualities = face_stream(1, 40)
    record = _record(features, qualities)
    record.version = 7
    data = encode_record(record)
    assert len(data) == 40 + 512 * 4 <= 3 * 1024
    back = decode_record("s", data, 7, PARAMS)
    agg, ref = back.aggregate, record.aggregate
    assert np.array_equal(agg.weighted_mean, ref.weighted_mean)
    assert (agg.s_sum, agg.frames, agg.accepted, agg.provisional) == (ref.s_sum, ref.frames, ref.accepted, False)
    assert (back.last_sequence, back.version) == (40, 7)
    # The decoded state continues exactly like the original one.
    more, more_q = face_stream(1, 5)
    for i, (f, q) in enumerate(zip(more, more_q), start=41):
        apply_frame(record, FrameInput("s", i, f, float(q)))
        apply_frame(back, FrameInput("s", i, f, float(q)))
    assert np.array_equal(record.aggregate.template, back.aggregate.template)


def test_record_of_empty_and_provisional_subjects():
    empty = SubjectRecord("e", PARAMS.new_aggregate(), last_sequence=9)
    back = decode_record("e", encode_record(empty), 1, PARAMS)
    assert back.aggregate.weighted_mean is None and back.last_sequence == 9
    low = _record(*face_stream(2, 1, low=0.0, high=0.1))
    assert low.aggregate.provisional
    assert decode_record("s", encode_record(low), 1, PARAMS).aggregate.provisional


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:10], "shorter than its header"),
        (lambda b: b"XXXX" + b[4:], "unknown record format"),
        (lambda b: b[:-4], "expected"),
    ],
)
def test_corrupt_records_are_rejected(mutate, message):
    data = encode_record(_record(*face_stream(3, 3)))
    with pytest.raises(ValueError, match=message):
        decode_record("s", mutate(data), 1, PARAMS)


def test_stream_of_frames_equals_the_offline_progressive_templates():
    features, qualities = face_stream(4, 60)
    record = _record(features, qualities)
    np.testing.assert_allclose(record.aggregate.template, progressive_templates(features, qualities)[-1], atol=1e-6)


def test_duplicates_and_out_of_order_sequences_are_not_applied():
    features, qualities = face_stream(5, 3, low=0.5)
    record = SubjectRecord("s", PARAMS.new_aggregate())
    first = apply_frame(record, FrameInput("s", 10, features[0], float(qualities[0])))
    assert first.status is FrameStatus.SEEDED and first.similarity is None and first.last_sequence == 10
    before = encode_record(record)
    for seq in (10, 3):  # a replay, and a frame older than the last applied one
        outcome = apply_frame(record, FrameInput("s", seq, features[1], float(qualities[1])))
        assert outcome.status is FrameStatus.DUPLICATE
        assert "not applied" in outcome.detail and outcome.frames == 1 and outcome.last_sequence == 10
    assert encode_record(record) == before
    gap = apply_frame(record, FrameInput("s", 25, features[1], float(qualities[1])))  # gaps are fine
    assert gap.status is FrameStatus.ACCEPTED and gap.frames == 2 and gap.last_sequence == 25


def test_gate_outcomes_carry_reasons():
    features, _ = face_stream(6, 2)
    record = SubjectRecord("s", PARAMS.new_aggregate())
    apply_frame(record, FrameInput("s", 1, features[0], 0.9))
    low = apply_frame(record, FrameInput("s", 2, features[1], 0.2))
    assert low.status is FrameStatus.REJECTED_QUALITY and "s_th" in low.detail and low.frames == 2
    other = unit(np.random.default_rng(0).normal(size=512))
    far = apply_frame(record, FrameInput("s", 3, other, 0.9))
    assert far.status is FrameStatus.REJECTED_SIMILARITY and "f_th" in far.detail and far.similarity < 0.5
    assert record.aggregate.accepted == 1 and record.last_sequence == 3


def test_low_quality_first_frame_is_provisional_and_replaced():
    features, _ = face_stream(7, 3)
    record = SubjectRecord("s", PARAMS.new_aggregate())
    seed = apply_frame(record, FrameInput("s", 1, features[0], 0.1))
    assert seed.status is FrameStatus.SEEDED and "provisional" in seed.detail
    reseed = apply_frame(record, FrameInput("s", 2, features[1], 0.8))
    assert reseed.status is FrameStatus.RESEEDED
    np.testing.assert_allclose(record.aggregate.template, features[1], atol=1e-6)
    strict = SubjectRecord("t", AggregationParams(0.5, 0.3, reseed_low_quality=False).new_aggregate())
    apply_frame(strict, FrameInput("t", 1, features[0], 0.1))
    assert apply_frame(strict, FrameInput("t", 2, features[1], 0.8)).status is FrameStatus.ACCEPTED


def test_wrong_dimension_against_a_stored_template_is_invalid_and_harmless():
    record = _record(*face_stream(8, 2))
    before = encode_record(record)
    outcome = apply_frame(record, FrameInput("s", 9, unit(np.ones(128)), 0.9))
    assert outcome.status is FrameStatus.INVALID and "dims" in outcome.detail
    assert encode_record(record) == before


def test_reset_clears_the_last_sequence():
    record = _record(*face_stream(9, 4))
    fresh = reset_record(record, PARAMS)
    assert fresh.aggregate.weighted_mean is None and fresh.aggregate.frames == 0 and fresh.last_sequence == 0


def test_clone_is_independent():
    record = _record(*face_stream(10, 3, low=0.5))
    clone = record.clone()
    f, q = face_stream(10, 1, low=0.9)
    apply_frame(clone, FrameInput("s", 99, f[0], float(q[0])))
    assert record.aggregate.frames == 3 and clone.aggregate.frames == 4 and record.last_sequence == 3


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "0 bytes; expected 2048"),
        (np.zeros(511, "<f4").tobytes(), "2044 bytes; expected 2048"),
        (np.full(512, np.nan, "<f4").tobytes(), "NaN or inf"),
        (np.r_[np.ones(511), np.inf].astype("<f4").tobytes(), "NaN or inf"),
        (np.zeros(512, "<f4").tobytes(), "all zeros"),
    ],
)
def test_bad_embeddings_are_invalid_argument(raw, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_embedding(raw, 512)


def test_embeddings_are_normalised_even_when_their_square_overflows_float32():
    v = parse_embedding(np.full(512, 3e19, "<f4").tobytes(), 512)
    np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-6)
    assert v.dtype == np.float32


@pytest.mark.parametrize("quality", [-0.01, 1.01, float("nan"), float("inf")])
def test_quality_outside_unit_interval_is_invalid(quality):
    with pytest.raises(InvalidArgument, match="quality"):
        check_quality(quality)


@pytest.mark.parametrize("value", ["", "a" * 257, "tab\there", "nul\x00"])
def test_bad_ids_are_invalid(value):
    with pytest.raises(InvalidArgument):
        check_id(value)


def test_ids_sequences_and_pages():
    assert check_id("camera-1/track 7 ü") == "camera-1/track 7 ü"
    with pytest.raises(InvalidArgument, match=r"outside \[1, 2\^63 - 1\]"):
        check_sequence(0)
    assert check_sequence(2**63 - 1) == 2**63 - 1
    for too_big in (2**63, 2**64 - 1):  # 2^64 - 1 used to freeze the subject: every later frame a duplicate
        with pytest.raises(InvalidArgument, match="ResetSubject"):
            check_sequence(too_big)
    assert decode_page_token(encode_page_token("ü/x")) == "ü/x" and decode_page_token("") == ""
    with pytest.raises(InvalidArgument, match="page_token"):
        decode_page_token("%%%")
    assert page_size(0) == 100
    with pytest.raises(InvalidArgument):
        page_size(5000)


def test_lru_cache_is_bounded():
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and len(cache) == 2 and cache.get("a") == 1
    cache.discard(["a"])
    assert cache.get("a") is None


def test_gallery_search_ranks_by_cosine():
    rng = np.random.default_rng(0)
    templates = unit(rng.normal(size=(5, 16)))
    gallery = GalleryIndex(16)
    gallery.replace(3, [IdentityRecord(f"id{i}", f"name{i}", t) for i, t in enumerate(templates)])
    matches = gallery.search(templates[2], 3)
    assert [m.identity_id for m in matches][0] == "id2" and matches[0].display_name == "name2"
    assert matches[0].score == pytest.approx(1.0, abs=1e-6)
    assert matches[0].score >= matches[1].score >= matches[2].score
    assert len(gallery.search(templates[0], 50)) == 5 and gallery.search(templates[0], 0) == []
    assert GalleryIndex(16).search(templates[0], 3) == []


def test_active_subjects_window_and_bound():
    active = ActiveSubjects(window_s=10, max_tracked=3)
    active.touch(["a", "b"], now=0)
    active.touch(["c"], now=5)
    assert active.count(now=6) == 3
    assert active.count(now=12) == 1  # a and b are older than 10 s
    active.touch(["d", "e", "f"], now=13)
    assert active.count(now=13) == 3


def test_config_validation():
    with pytest.raises(ValueError, match="s_th"):
        ServiceConfig(s_th=1.5)
    with pytest.raises(ValueError, match="store_url"):
        ServiceConfig(store_url="postgres://x")
    with pytest.raises(ValueError, match="max_top_k"):
        ServiceConfig(top_k=10, max_top_k=5)
    with pytest.raises(ValueError, match="host:port"):
        TritonConfig(url="http://localhost:8001/")
    with pytest.raises(ValueError, match="input_kind"):
        TritonConfig(url="localhost:8001", input_kind="pixels")  # type: ignore[arg-type]


def test_progressive_state_fields_used_by_the_codec_exist():
    # The codec rebuilds ProgressiveQWFA from these public fields; fail loudly if the math module renames one.
    fields = set(ProgressiveQWFA.__dataclass_fields__)
    assert {"weighted_mean", "s_sum", "frames", "accepted", "provisional", "f_th", "s_th"} <= fields
