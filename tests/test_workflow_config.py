"""The pipeline form → EQFaceConfig: precedence (preset < form < overrides), round trip, early validation."""

from __future__ import annotations

import pytest

from eqface.config import preset, to_dict
from eqface.workflow.configure import FORM_FIELDS, build_config, config_from_json, config_json, preset_form


def test_the_form_of_a_preset_resolves_to_that_preset():
    cfg = build_config("demo", preset_form("demo"), iterations=1)
    assert to_dict(cfg) == to_dict(preset("demo"))


def test_form_values_override_the_preset_and_overrides_override_both():
    form = {
        **preset_form("test"),
        "backbone": "iresnet18",
        "margin_m2": 0.5,
        "step1_milestones": [1],
        "qwdf_threshold": 0.3,
    }
    cfg = build_config("test", form, ["margin.m2=0.4", "augment.blur_p=0.25"], iterations=3)
    assert cfg.model.backbone == "iresnet18"
    assert cfg.model.image_size == (32, 32)  # not in the form: from the preset
    assert cfg.margin.m2 == 0.4 and cfg.augment.blur_p == 0.25
    assert cfg.train.step1.milestones == (1,) and cfg.train.qwdf_threshold == 0.3
    assert cfg.train.iterations == 3


def test_every_form_field_names_a_config_key():
    values = preset_form("paper")
    assert set(values) == set(FORM_FIELDS)
    assert values["step2_milestones"] == [5, 10] and values["margin_scale"] == 64.0


def test_json_round_trip():
    cfg = build_config("test", preset_form("test"), iterations=2)
    assert config_from_json(config_json(cfg)) == cfg


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"eval_identities": 0}, "held-out"),
        ({"step1_milestones": [6, 3]}, "milestones"),
        ({"step2_epochs": 0}, "epochs"),
        ({"qwdf_threshold": 1.5}, "qwdf_threshold"),
        ({"data_source": "rec"}, "dataset location"),
        ({"backbone_size": 3}, "unknown form fields"),
        ({"embedding_size": "big"}, "embedding_size"),
    ],
)
def test_bad_values_fail_before_training(change, message):
    with pytest.raises(ValueError, match=message):
        build_config("test", {**preset_form("test"), **change})


def test_a_bad_override_names_itself():
    with pytest.raises(ValueError, match="no field 'nope'"):
        build_config("test", preset_form("test"), ["train.nope=1"])


def test_the_choices_come_from_where_they_are_defined():
    from eqface.config import PRESETS
    from eqface.data.factory import SOURCES
    from eqface.models import BACKBONES
    from eqface.serving.model_configs import VARIANTS
    from eqface.workflow.configure import form_choices
    from eqface.workflow.dataset import MATERIALIZE_MODES

    choices = form_choices()
    assert choices["preset"] == sorted(PRESETS) and choices["backbone"] == BACKBONES.names()
    assert choices["data_source"] == SOURCES.names() and "synthetic" in choices["data_source"]
    assert choices["serving_variant"] == list(VARIANTS) and choices["data_materialize"] == list(MATERIALIZE_MODES)
    assert set(choices) <= set(FORM_FIELDS) | {"preset", "serving_variant", "data_materialize"}


def test_a_wrong_choice_names_every_allowed_value():
    from eqface.models import BACKBONES
    from eqface.workflow.configure import check_choices

    check_choices({"backbone": "tiny", "serving_variant": "local", "data_materialize": "pack"})
    with pytest.raises(ValueError) as error:
        check_choices({"backbone": "iresnet101", "serving_variant": "gpu", "preset": "test"})
    message = str(error.value)
    assert "backbone='iresnet101' is not one of: " + ", ".join(BACKBONES.names()) in message
    assert "serving_variant='gpu' is not one of: production, local" in message and "preset" not in message
    with pytest.raises(ValueError, match="not choice parameters"):
        check_choices({"batch_size": "64"})


def test_a_training_task_sees_only_its_own_schedule():
    from eqface.config import TrainConfig
    from eqface.workflow.configure import task_config

    cfg = build_config("test", {**preset_form("test"), "step1_epochs": 7, "step3_lr": 0.5}, iterations=3)
    step1 = task_config(cfg, "step1")
    assert step1.train.step1 == cfg.train.step1 and step1.train.step1.epochs == 7
    assert step1.train.step3 == TrainConfig().step3 and step1.train.step2 == TrainConfig().step2
    assert step1.train.iterations == TrainConfig().iterations
    assert (
        task_config(cfg, "step3").train.step3.lr == 0.5 and task_config(cfg, "step3").train.step1 == TrainConfig().step1
    )
    data = task_config(cfg, None)
    assert all(getattr(data.train, s) == getattr(TrainConfig(), s) for s in ("step1", "step2", "step3"))
    # everything else is untouched
    assert (data.data, data.model, data.margin, data.train.seed) == (cfg.data, cfg.model, cfg.margin, cfg.train.seed)
    assert task_config(build_config("test", {**preset_form("test"), "step3_lr": 0.9}), "step1") == task_config(
        build_config("test", preset_form("test")), "step1"
    )
    with pytest.raises(ValueError, match="unknown step"):
        task_config(cfg, "step4")
