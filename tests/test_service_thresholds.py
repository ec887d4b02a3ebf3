"""Where the service's aggregation thresholds come from: flag, then the served model's calibration, then the paper."""

from __future__ import annotations

import pytest

from eqface.aggregation import PAPER_F_TH, PAPER_S_TH, Thresholds
from eqface.service.config import ServiceConfig
from eqface.service.service import AggregatorService
from eqface.service.store import open_store
from eqface.service.thresholds import resolve_thresholds

CALIBRATED = Thresholds(f_th=0.31, s_th=0.12, qwfaf_s_th=0.14)


def test_the_served_models_calibration_wins_over_the_paper():
    used = resolve_thresholds(None, None, CALIBRATED)
    assert (used.f_th, used.s_th, used.qwfaf_s_th) == (0.31, 0.12, 0.14)
    assert set(used.sources.values()) == {"model"}


def test_a_flag_overrides_only_its_own_threshold():
    used = resolve_thresholds(None, 0.5, CALIBRATED)
    assert (used.f_th, used.sources["f_th"]) == (0.31, "model")
    assert (used.s_th, used.sources["s_th"]) == (0.5, "flag")
    assert resolve_thresholds(0.2, None, None).sources == {
        "f_th": "flag",
        "s_th": "paper_default",
        "qwfaf_s_th": "paper_default",
    }


def test_without_a_calibrated_model_the_paper_values_apply():
    used = resolve_thresholds(None, None, None)
    assert (used.f_th, used.s_th, used.qwfaf_s_th) == (PAPER_F_TH, PAPER_S_TH, PAPER_S_TH)
    assert "f_th 0.5000 (paper_default)" in used.describe()


def test_feature_mode_uses_flags_or_paper_values_and_exports_them(tmp_path, caplog):
    config = ServiceConfig(store_url=f"sqlite:///{tmp_path}/state.db", s_th=0.2, metrics_port=0)
    with caplog.at_level("WARNING", logger="eqface.service.service"):
        service = AggregatorService(config, open_store(config.store_url))
    try:
        assert (service.params.f_th, service.params.s_th) == (PAPER_F_TH, 0.2)
        assert "s_th 0.2000 (flag)" in caplog.text and "f_th 0.5000 (paper_default)" in caplog.text
        text = service.metrics.exposition().decode()
        assert 'eqface_aggregator_aggregation_threshold{source="flag",threshold="s_th"} 0.2' in text
        assert 'eqface_aggregator_aggregation_threshold{source="paper_default",threshold="f_th"} 0.5' in text
    finally:
        service.store.close()


def test_threshold_flags_are_validated():
    with pytest.raises(ValueError, match="s_th is a quality threshold"):
        ServiceConfig(s_th=1.5)
