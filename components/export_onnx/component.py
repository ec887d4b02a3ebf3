"""Export ONNX: the final model → model.onnx (contract names, dynamic batch), parity-checked on held-out faces."""

from kfp import dsl

from components.images import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def export_onnx(
    model: dsl.Input[dsl.Model],
    dataset: dsl.Input[dsl.Dataset],
    config_json: str,
    onnx_model: dsl.Output[dsl.Model],
    opset: int = 18,
):
    """Writes ``onnx_model/model.onnx``; fails when onnxruntime and torch disagree on real faces."""
    from eqface.workflow.configure import config_from_json
    from eqface.workflow.dataset import with_dataset
    from eqface.workflow.export import export_step

    cfg = with_dataset(config_from_json(config_json), dataset.path)
    onnx_model.metadata.update(export_step(model.path, onnx_model.path, cfg, opset))
