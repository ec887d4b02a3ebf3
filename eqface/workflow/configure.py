"""The pipeline's form (the parameters a user sets in the Kubeflow UI) → one resolved :class:`EQFaceConfig`.

Precedence, lowest first: the preset, then the form's values, then free-form ``section.field=value`` overrides for
everything the form does not show. The result is what ``eqface train --preset P --set ...`` would train with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from eqface.config import EQFaceConfig, apply_overrides, merge, preset, to_dict, to_json

# Form field → dotted config key. The pipeline's parameters, the configure component and the tests all use this table.
FORM_FIELDS: dict[str, str] = {
    "data_source": "data.source",
    "data_location": "data.path",
    "eval_identities": "data.eval_identities",
    "backbone": "model.backbone",
    "embedding_size": "model.embedding_size",
    "step1_epochs": "train.step1.epochs",
    "step1_lr": "train.step1.lr",
    "step1_milestones": "train.step1.milestones",
    "step2_epochs": "train.step2.epochs",
    "step2_lr": "train.step2.lr",
    "step2_milestones": "train.step2.milestones",
    "step3_epochs": "train.step3.epochs",
    "step3_lr": "train.step3.lr",
    "step3_milestones": "train.step3.milestones",
    "margin_m1": "margin.m1",
    "margin_m2": "margin.m2",
    "margin_m3": "margin.m3",
    "margin_scale": "margin.scale",
    "qwdf_threshold": "train.qwdf_threshold",
    "batch_size": "train.batch_size",
    "precision": "train.precision",
}


def form_choices() -> dict[str, list[str]]:
    """The allowed values of the form's choice parameters, read from where each choice is defined (presets, the
    backbone and data-source registries, the serving variants, the dataset's materialize modes, the training
    precisions)."""
    from eqface.config import PRESETS
    from eqface.data.factory import SOURCES
    from eqface.models import BACKBONES
    from eqface.serving.model_configs import VARIANTS
    from eqface.train.precision import PRECISIONS
    from eqface.workflow.dataset import MATERIALIZE_MODES

    return {
        "preset": sorted(PRESETS),
        "backbone": BACKBONES.names(),
        "data_source": SOURCES.names(),
        "serving_variant": list(VARIANTS),
        "data_materialize": list(MATERIALIZE_MODES),
        "precision": list(PRECISIONS),
    }


def check_choices(values: Mapping[str, str]) -> None:
    """Fails with every wrong choice and its allowed values (keys: names of :func:`form_choices`).

    Raises:
        ValueError: a value outside its choices, or a key that is not a choice parameter.
    """
    choices = form_choices()
    unknown = sorted(set(values) - set(choices))
    if unknown:
        raise ValueError(f"{unknown} are not choice parameters; those are: {', '.join(choices)}")
    wrong = [
        f"{name}={value!r} is not one of: {', '.join(choices[name])}"
        for name, value in values.items()
        if value not in choices[name]
    ]
    if wrong:
        raise ValueError("; ".join(wrong))


def form_defaults(cfg: EQFaceConfig) -> dict[str, Any]:
    """The form's values that reproduce ``cfg`` (tuples become lists, as KFP list parameters are JSON lists)."""
    flat = to_dict(cfg)
    values = {}
    for name, key in FORM_FIELDS.items():
        node: Any = flat
        for part in key.split("."):
            node = node[part]
        values[name] = list(node) if isinstance(node, tuple | list) else node
    return values


def preset_form(name: str) -> dict[str, Any]:
    return form_defaults(preset(name))


def build_config(
    preset_name: str, form: Mapping[str, Any], overrides: Sequence[str] = (), iterations: int | None = None
) -> EQFaceConfig:
    """Applies the form (every key must be a form field) and then ``overrides`` to the preset.

    Raises:
        ValueError: an unknown form field, a value of the wrong type, or a bad override (the message names it).
    """
    unknown = sorted(set(form) - set(FORM_FIELDS))
    if unknown:
        raise ValueError(f"unknown form fields {unknown}; valid: {', '.join(FORM_FIELDS)}")
    nested: dict[str, Any] = {}
    for name, value in form.items():
        node = nested
        *parents, leaf = FORM_FIELDS[name].split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    if iterations is not None:
        nested.setdefault("train", {})["iterations"] = iterations
    cfg = apply_overrides(merge(preset(preset_name), nested), list(overrides))
    check_pipeline_config(cfg)
    return cfg


def check_pipeline_config(cfg: EQFaceConfig) -> None:
    """Fails fast (before any GPU is requested) on settings that would only break a later step."""
    if cfg.data.eval_identities < 2:
        raise ValueError(
            f"data.eval_identities is {cfg.data.eval_identities}: the evaluate step needs at least 2 held-out "
            "identities to measure verification accuracy"
        )
    for step in ("step1", "step2", "step3"):
        sched = getattr(cfg.train, step)
        if sched.epochs < 1:
            raise ValueError(f"train.{step}.epochs must be at least 1, got {sched.epochs}")
        if list(sched.milestones) != sorted(sched.milestones) or any(m < 1 for m in sched.milestones):
            raise ValueError(
                f"train.{step}.milestones must be increasing epoch numbers >= 1, got {list(sched.milestones)}"
            )
    if not 0.0 <= cfg.train.qwdf_threshold < 1.0:
        raise ValueError(f"train.qwdf_threshold (QWDF s_th) must lie in [0, 1), got {cfg.train.qwdf_threshold}")
    if cfg.data.source != "synthetic" and not cfg.data.path:
        raise ValueError(f"data.source={cfg.data.source} needs a dataset location (data.path)")


TRAINING_STEPS = ("step1", "step2", "step3")


def task_config(cfg: EQFaceConfig, step: str | None) -> EQFaceConfig:
    """``cfg`` as a pipeline task that trains only ``step`` (None: no step, the data step) is given it: the other
    steps' schedules and the number of 3 → 2 rounds, which the task never reads, are set to their defaults.

    KFP's cache key holds every input value, the configuration included; without this, a new Step 3 learning rate
    would change Step 1's key and retrain it. Only the schedules are dropped: the trainer reads ``train.<step>`` of
    the step it runs and nothing else of them (``eqface.train.trainer``); every other setting stays.

    Raises:
        ValueError: ``step`` is not one of :data:`TRAINING_STEPS` or None.
    """
    from dataclasses import replace

    from eqface.config import TrainConfig

    if step is not None and step not in TRAINING_STEPS:
        raise ValueError(f"unknown step {step!r}; valid: {', '.join(TRAINING_STEPS)} or None")
    defaults = TrainConfig()
    unread = {s: getattr(defaults, s) for s in TRAINING_STEPS if s != step}
    return replace(cfg, train=replace(cfg.train, **unread, iterations=defaults.iterations))


def config_json(cfg: EQFaceConfig) -> str:
    return to_json(cfg)


def config_from_json(text: str) -> EQFaceConfig:
    from eqface.config import config_from_dict

    return config_from_dict(json.loads(text))
