"""Export: the quality head grafted onto the imported recogniser's graph → one contract ONNX (``eqface byor export``),
parity-checked on real faces; the deploy step serves it like any export."""

from kfp import dsl

from components.images import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def export_grafted(
    model: dsl.Input[dsl.Model],
    dataset: dsl.Input[dsl.Dataset],
    onnx_model: dsl.Output[dsl.Model],
):
    """Writes ``onnx_model/model.onnx``; fails when its embeddings or qualities drift from the originals."""
    from eqface.workflow.byor import export_step

    onnx_model.metadata.update(export_step(model.path, dataset.path, onnx_model.path))
