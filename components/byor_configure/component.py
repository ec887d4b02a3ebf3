"""Resolve the BYOR pipeline's form: the data configuration prepare-data reads, and the recogniser and Step 2
settings (validated before anything is downloaded or computed)."""

from typing import List, NamedTuple

from kfp import dsl

from components.images import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def configure_byor(
    data_source: str,
    data_location: str,
    max_identities: int,
    eval_identities: int,
    input_mean: List[float],
    input_std: List[float],
    channel_order: str,
    tap: str,
    embedding_output: str,
    image_size: List[int],
    check_normalisation: bool,
    check_faces: int,
    min_auc: float,
    max_deficit: float,
    views: int,
    epochs: int,
    lr: float,
    batch_size: int,
    classifier: str,
    classifier_epochs: int,
) -> NamedTuple("ByorConfig", [("config_json", str), ("byor_json", str)]):
    """Returns ``config_json`` (the faces to prepare) and ``byor_json`` (import and Step 2 settings).

    Args:
        data_source: npz (a face pack), folder, rec or synthetic, as in the training pipeline.
        eval_identities: identities held out from Step 2 for the normalisation check and the evaluation.
    """
    from collections import namedtuple

    from eqface.workflow.byor import ByorForm, data_config_json

    config = data_config_json(data_source, data_location, max_identities, eval_identities)
    form = ByorForm(
        input_mean=input_mean,
        input_std=input_std,
        channel_order=channel_order,
        tap=tap,
        embedding_output=embedding_output,
        image_size=image_size,
        check_normalisation=check_normalisation,
        check_faces=check_faces,
        min_auc=min_auc,
        max_deficit=max_deficit,
        views=views,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        classifier=classifier,
        classifier_epochs=classifier_epochs,
    )
    print(form.to_json())
    return namedtuple("ByorConfig", ["config_json", "byor_json"])(config, form.to_json())
