"""Resolve the pipeline's form into one EQFaceConfig (JSON), validated before any GPU is requested, and the views of
it that the data and training steps take (so that their cache keys hold only what they read)."""

from typing import List, NamedTuple

from kfp import dsl

from components.images import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def configure(
    preset: str,
    overrides: List[str],
    iterations: int,
    data_source: str,
    data_location: str,
    eval_identities: int,
    backbone: str,
    embedding_size: int,
    step1_epochs: int,
    step1_lr: float,
    step1_milestones: List[int],
    step2_epochs: int,
    step2_lr: float,
    step2_milestones: List[int],
    step3_epochs: int,
    step3_lr: float,
    step3_milestones: List[int],
    margin_m1: float,
    margin_m2: float,
    margin_m3: float,
    margin_scale: float,
    qwdf_threshold: float,
    batch_size: int,
    precision: str,
    serving_variant: str,
    data_materialize: str,
) -> NamedTuple(
    "Configuration",
    [("config_json", str), ("data_config", str), ("step1_config", str), ("step2_config", str), ("step3_config", str)],
):
    """Resolves the configuration: preset, then the form's values, then ``overrides``.

    Checks the whole form first, so that a typo fails here, in seconds, rather than in a later step on a GPU: every
    choice parameter (preset, backbone, data source, serving variant, materialize mode, precision) against its allowed
    values,
    then the resolved configuration.

    Args:
        preset: eqface preset filling everything the form does not show (``eqface config --preset NAME``).
        overrides: ``section.field=value`` strings applied last (e.g. ``augment.blur_p=0.3``).
        iterations: rounds of Step 3 → Step 2 after Step 1 → Step 2 (fixed when the pipeline is compiled).
        serving_variant: checked here only (the deploy step uses it).
        data_materialize: checked here only (the prepare-data step uses it).

    Returns:
        config_json: the resolved configuration (evaluate and export read all of it).
        data_config: the same without the training schedules, for prepare-data.
        step1_config: the same with only Step 1's schedule (the other steps' at their defaults).
        step2_config: the same with only Step 2's schedule.
        step3_config: the same with only Step 3's schedule.
    """
    from collections import namedtuple

    from eqface.workflow.configure import TRAINING_STEPS, build_config, check_choices, config_json, task_config

    check_choices(
        {
            "preset": preset,
            "backbone": backbone,
            "data_source": data_source,
            "serving_variant": serving_variant,
            "data_materialize": data_materialize,
            "precision": precision,
        }
    )

    form = {
        "data_source": data_source,
        "data_location": data_location,
        "eval_identities": eval_identities,
        "backbone": backbone,
        "embedding_size": embedding_size,
        "step1_epochs": step1_epochs,
        "step1_lr": step1_lr,
        "step1_milestones": step1_milestones,
        "step2_epochs": step2_epochs,
        "step2_lr": step2_lr,
        "step2_milestones": step2_milestones,
        "step3_epochs": step3_epochs,
        "step3_lr": step3_lr,
        "step3_milestones": step3_milestones,
        "margin_m1": margin_m1,
        "margin_m2": margin_m2,
        "margin_m3": margin_m3,
        "margin_scale": margin_scale,
        "qwdf_threshold": qwdf_threshold,
        "batch_size": batch_size,
        "precision": precision,
    }
    cfg = build_config(preset, form, overrides, iterations)
    views = [config_json(task_config(cfg, step)) for step in (None, *TRAINING_STEPS)]
    print(config_json(cfg))
    outputs = namedtuple(
        "Configuration", ["config_json", "data_config", "step1_config", "step2_config", "step3_config"]
    )
    return outputs(config_json(cfg), *views)
