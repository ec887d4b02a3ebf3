"""Prepare data: an image folder, a .rec, a shared .npz pack or synthetic faces → a Dataset artifact."""

from kfp import dsl

from components.images import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def prepare_data(
    config_json: str,
    dataset: dsl.Output[dsl.Dataset],
    materialize: str = "auto",
    pack_max_images: int = 200000,
):
    """Reads ``data`` of the configuration (local path, PVC mount, s3:// or gs://), checks it, writes the artifact.

    Args:
        config_json: the configure step's output.
        dataset: folder with dataset.json (+ faces.npz when packed).
        materialize: pack (copy the faces into the artifact), reference (leave them on the volume) or auto (pack up
            to ``pack_max_images`` images; object-store data and synthetic faces are always packed).
    """
    from eqface.workflow.configure import config_from_json
    from eqface.workflow.dataset import prepare_dataset

    prepared = prepare_dataset(config_from_json(config_json), dataset.path, materialize, pack_max_images)
    dataset.metadata.update(prepared.metadata())
    print(prepared.metadata())
