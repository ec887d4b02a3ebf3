"""Step 3: freeze the quality branch and retrain the backbone with s_i as sample weight (QWDF: s_i < s_th counts 0)."""

from kfp import dsl

from components.images import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def train_weighted(
    dataset: dsl.Input[dsl.Dataset],
    init_model: dsl.Input[dsl.Model],
    config_json: str,
    model: dsl.Output[dsl.Model],
    gpus: int = 1,
    stage: str = "step3",
    checkpoint_root: str = "",
):
    """Step 3: freeze the quality branch and retrain the backbone with s_i as sample weight (QWDF: s_i < s_th counts 0).

    Args:
        gpus: training processes; above 1 the step runs under torchrun --nproc_per_node=gpus (DDP).
        stage: the step's name in the training history (step3, step2-1, step3-1, ...).
        checkpoint_root: a persistent volume path; the step trains in <root>/<stage>-<hash of its inputs> so that a
            retried pod resumes from its last checkpoint ("" trains in the output artifact).
    """
    from eqface.workflow.configure import config_from_json
    from eqface.workflow.training import train_step, work_folder

    inputs = {
        "step": "step3",
        "config": config_json,
        "dataset": dataset.uri,
        "init_model": init_model.uri,
        "gpus": gpus,
    }
    metadata = train_step(
        "step3",
        config_from_json(config_json),
        dataset.path,
        model.path,
        init_dir=init_model.path,
        gpus=gpus,
        stage=stage,
        work_dir=work_folder(checkpoint_root, stage, inputs),
    )
    model.metadata.update({**metadata, "framework": "pytorch", "file": "final.pt"})
