"""The bring-your-own-recogniser pipeline: a pretrained ArcFace-style ONNX model → configure → prepare data → import →
Step 2 on the frozen recogniser → evaluate → export the grafted ONNX → deploy (when the evaluation passes).

Steps 1 and 3 are skipped: the recogniser stays as it was trained (paper §5.2). prepare-data and deploy are the
training pipeline's own components; the cluster settings and their Kubernetes helpers are ``pipeline.py``'s.
"""

from collections.abc import Callable
from pathlib import Path
from typing import List, NamedTuple

from kfp import compiler, dsl

from components.byor_configure import configure_byor
from components.byor_evaluate import evaluate_byor
from components.byor_export import export_grafted
from components.byor_import import import_recogniser
from components.byor_step2 import train_quality_frozen
from components.deploy_triton import deploy_triton
from components.pipeline import (
    ClusterSettings,
    _light,
    _mount,
    _object_store_secret,
    _triton_control,
)
from components.prepare_data import prepare_data

BYOR_PIPELINE_NAME = "eqface-byor"


class ByorOutputs(NamedTuple):
    """What a BYOR run shows: its Metrics, the HTML report and the grafted ONNX (there is no torch checkpoint)."""

    metrics: dsl.Metrics
    report: dsl.HTML
    onnx_model: dsl.Model


def build_byor_pipeline(cluster: ClusterSettings = ClusterSettings()) -> Callable:
    """The pipeline function; the form's defaults are ``eqface import-onnx``'s and ``eqface byor step2``'s."""
    from eqface.workflow.byor import form_defaults

    form = form_defaults()

    @dsl.pipeline(
        name=BYOR_PIPELINE_NAME,
        description="EQFace quality for a pretrained ONNX recogniser: import → Step 2 on the frozen recogniser → "
        "evaluate → export the grafted ONNX → deploy to Triton when the evaluation passes.",
    )
    def eqface_byor(
        model_uri: str,
        data_source: str = form["data_source"],
        data_location: str = form["data_location"],
        max_identities: int = form["max_identities"],
        eval_identities: int = form["eval_identities"],
        input_mean: List[float] = form["input_mean"],
        input_std: List[float] = form["input_std"],
        channel_order: str = form["channel_order"],
        tap: str = form["tap"],
        embedding_output: str = form["embedding_output"],
        image_size: List[int] = form["image_size"],
        check_normalisation: bool = form["check_normalisation"],
        check_faces: int = form["check_faces"],
        min_auc: float = form["min_auc"],
        max_deficit: float = form["max_deficit"],
        views: int = form["views"],
        epochs: int = form["epochs"],
        lr: float = form["lr"],
        batch_size: int = form["batch_size"],
        classifier: str = form["classifier"],
        classifier_epochs: int = form["classifier_epochs"],
        model_repository: str = cluster.default_repository,
        serving_variant: str = "production",
        triton_url: str = "",
        accuracy_threshold: float = 0.9,
        min_quality_std: float = 0.05,
    ) -> ByorOutputs:
        """EQFace quality for a pretrained ArcFace-style ONNX recogniser (one image input, one embedding output).

        Args:
            model_uri: the ONNX recogniser: a path on the data volume (/mnt/data/models/arcface.onnx),
                s3://bucket/key.onnx (s3://host:port/bucket/key.onnx for MinIO) or gs://bucket/key.onnx.
            data_source: the faces for the check, Step 2 and the evaluation: npz (a face pack), folder
                (root/<identity>/<image>), rec (insightface RecordIO) or synthetic.
            data_location: where they lie: a path on the data volume, s3://… or gs://… (shared:<file> names a file
                of the shared data folder).
            max_identities: use only the first N identities (0: all).
            eval_identities: the last identities, held out of Step 2 for the check and the evaluation.
            input_mean: pixel mean the recogniser expects, 1 or 3 values in its channel order.
            input_std: pixel std the recogniser expects, 1 or 3 values in its channel order.
            channel_order: RGB or BGR, the channel order the recogniser expects.
            tap: tensor or node feeding the quality branch; empty: the last spatial feature map before the
                embedding.
            embedding_output: the embedding output when the graph has several; empty: its only output.
            image_size: [H, W] when the graph's input size is symbolic; empty: read from the graph.
            check_normalisation: refuse the import when the stated normalisation fails on real faces (turn off only
                for untrained or non-face models).
            check_faces: held-out faces the check compares (every pair).
            min_auc: the check's minimum genuine-vs-impostor AUC.
            max_deficit: the check fails when the channel flip or a common setting beats the stated one by more.
            views: 1 clean + (views − 1) degraded copies of each training face.
            epochs: Step 2 epochs over every (face, view).
            lr: SGD learning rate of the quality branch.
            batch_size: faces per Step 2 batch.
            classifier: what Eq. 6 scores against: loo-centres, centres, or fitted (Step 1 on the frozen
                embeddings).
            classifier_epochs: epochs of the fitted classifier.
            model_repository: the Triton model repository the deploy step writes to (/mnt/models/eqface,
                s3://bucket/models, gs://...).
            serving_variant: production (onnxruntime on GPU) or local (the CPU python backend).
            triton_url: a running Triton (explicit model control) to load the new version into; empty: only write.
            accuracy_threshold: deploy gate, minimum 10-fold verification accuracy on the held-out identities.
            min_quality_std: deploy gate, minimum standard deviation of the held-out qualities.
        """
        config = configure_byor(
            data_source=data_source,
            data_location=data_location,
            max_identities=max_identities,
            eval_identities=eval_identities,
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
        ).set_display_name("configure")
        _light(config, cluster, cpu="500m", memory="1Gi")
        settings = config.outputs["byor_json"]

        data = _prepare_faces(config.outputs["config_json"], cluster)
        dataset = data.outputs["dataset"]

        imported = import_recogniser(model_uri=model_uri, dataset=dataset, byor_json=settings)
        # The file behind a URI may change under the same name: cached only where data is (--cache-data).
        _light(imported.set_display_name("import ONNX recogniser"), cluster, "2", "8Gi", cache=cluster.cache_data)
        _mount(imported, cluster.data_pvc, cluster.data_mount)
        _object_store_secret(imported, cluster)

        step2 = train_quality_frozen(
            recogniser=imported.outputs["recogniser"],
            dataset=dataset,
            byor_json=settings,
            feature_root=cluster.checkpoint_root,
        )
        _light(step2.set_display_name("step2: quality branch on the frozen recogniser"), cluster, "8", "32Gi")
        _mount(step2, cluster.work_pvc, cluster.work_mount)
        step2.set_retry(num_retries=cluster.train_retries, backoff_duration="60s", backoff_factor=2.0)
        step2.set_env_variable("TQDM_MININTERVAL", "60")
        final = step2.outputs["model"]

        scores = evaluate_byor(
            dataset=dataset,
            model=final,
            accuracy_threshold=accuracy_threshold,
            min_quality_std=min_quality_std,
        ).set_display_name("evaluate")
        _light(scores, cluster, cpu="4", memory="16Gi")

        onnx = export_grafted(model=final, dataset=dataset).set_display_name("export grafted ONNX")
        _light(onnx, cluster, cpu="2", memory="8Gi")
        _mount(onnx, cluster.data_pvc, cluster.data_mount)  # parity against the original file where it lies

        with dsl.If(scores.outputs["Output"] == True, name="evaluation-passed"):  # noqa: E712 (a KFP condition)
            release = deploy_triton(
                onnx_model=onnx.outputs["onnx_model"],
                repository=model_repository,
                variant=serving_variant,
                triton_url=triton_url,
            ).set_display_name("deploy to Triton")
            _light(release, cluster, cpu="1", memory="4Gi", cache=False)  # a side effect: never cached
            _mount(release, cluster.models_pvc, cluster.models_mount)
            _object_store_secret(release, cluster)
            _triton_control(release, cluster)

        return ByorOutputs(
            metrics=scores.outputs["metrics"], report=scores.outputs["report"], onnx_model=onnx.outputs["onnx_model"]
        )

    return eqface_byor


def _prepare_faces(config_json, cluster: ClusterSettings) -> dsl.PipelineTask:
    """The training pipeline's prepare-data step, always packing: every later step reads one local faces.npz."""
    data = prepare_data(config_json=config_json, materialize="pack").set_display_name("prepare data")
    _light(data, cluster, cpu="4", memory="16Gi", cache=cluster.cache_data)
    _mount(data, cluster.data_pvc, cluster.data_mount)
    _object_store_secret(data, cluster)
    return data


def compile_byor_pipeline(path: str | Path, cluster: ClusterSettings = ClusterSettings()) -> Path:
    """Writes the BYOR pipeline YAML to upload in the Kubeflow UI; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_byor_pipeline(cluster), str(path))
    return path
