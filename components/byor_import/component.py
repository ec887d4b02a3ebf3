"""Import: a pretrained ONNX recogniser (local/PVC path, s3:// or gs://) → dynamic batch, tap output, checked
normalisation (``eqface import-onnx``)."""

from kfp import dsl

from components.images import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def import_recogniser(
    model_uri: str,
    dataset: dsl.Input[dsl.Dataset],
    byor_json: str,
    recogniser: dsl.Output[dsl.Model],
):
    """Writes ``recogniser/recogniser.onnx`` and ``recogniser.json``; fails on a graph it cannot handle or a
    normalisation that fails the check on the dataset's held-out faces.

    Args:
        model_uri: the ONNX file: a path (PVC mount), s3://bucket/key.onnx or gs://bucket/key.onnx.
        byor_json: the configure step's recogniser and Step 2 settings.
    """
    from eqface.workflow.byor import ByorForm, import_step

    recogniser.metadata.update(import_step(model_uri, dataset.path, ByorForm.from_json(byor_json), recogniser.path))
