"""Step 2 on the frozen imported recogniser: cached embeddings and tap features, the quality branch trained with Eq. 6
(``eqface byor step2``)."""

from kfp import dsl

from components.images import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def train_quality_frozen(
    recogniser: dsl.Input[dsl.Model],
    dataset: dsl.Input[dsl.Dataset],
    byor_json: str,
    model: dsl.Output[dsl.Model],
    feature_root: str = "",
):
    """Writes the recogniser, ``step2/quality_head.pt`` and ``step2/step2.json`` (history, held-out figures).

    Args:
        feature_root: a persistent volume path for the feature caches (a retried pod resumes them); "" keeps them in
            a temporary folder.
    """
    from eqface.workflow.byor import ByorForm, step2_step

    metadata = step2_step(recogniser.path, dataset.path, ByorForm.from_json(byor_json), model.path, feature_root)
    model.metadata.update({**metadata, "framework": "onnx+pytorch-head"})
