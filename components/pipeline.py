"""The EQFace training pipeline: configure → prepare data → Step 1 → Step 2 → (Step 3 → Step 2) × N → evaluate (the
final model against the Step 1 → 2 model; the better recogniser goes on) → export ONNX → deploy (only when the
evaluation passes its gate).

KFP has no while-loops and ``dsl.ParallelFor`` runs its iterations side by side, so the sequential 3 → 2 rounds are
unrolled when the pipeline is compiled: ``build_pipeline(iterations=N)`` (``eqface pipeline compile --iterations N``)
writes a flat chain whose tasks are named after ``eqface.train.plan.step_plan`` (step1, step2-1, step3-1,
step2-2, ...). A sub-pipeline per round would not change that (KFP v2 has no recursion, so it must be unrolled too),
would nest every round one level deeper in the UI, and kfp 2.17's local runner cannot pass artifacts into one.

Kubernetes concerns are attached here, never in the components: GPUs, CPU/memory, /dev/shm, tolerations, retries,
caching, PVCs and the object-store secret. The local runner ignores them; tests read them from the compiled YAML.
No task takes a value of the run (run id, run name, task id) as an input: KFP's cache key holds every input value,
so one such input would make every run miss the cache (components/README.md, "Caching").
"""

from collections.abc import Callable
from pathlib import Path
from typing import List, NamedTuple

from kfp import compiler, dsl, kubernetes

from components.cluster import ClusterSettings
from components.configure import configure
from components.deploy_triton import deploy_triton
from components.evaluate import evaluate
from components.export_onnx import export_onnx
from components.prepare_data import prepare_data
from components.train_backbone import train_backbone
from components.train_quality import train_quality
from components.train_weighted import train_weighted

PIPELINE_NAME = "eqface-training"
GPU_RESOURCE = "nvidia.com/gpu"
# Object-store credentials, each optional: S3/MinIO through boto3's variables, GCS through a key file in the volume.
OBJECT_STORE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
SECRET_MOUNT = "/var/run/secrets/eqface-object-store"
CONTROL_KEY_MOUNT = "/var/run/secrets/eqface-triton-control"
GCS_KEY_FILE = "gcs-credentials.json"
# The evaluate step needs held-out identities; a preset that holds out none (paper: all of MS1MV2 trains) gets these.
DEFAULT_EVAL_IDENTITIES = 200


class Outputs(NamedTuple):
    metrics: dsl.Metrics
    report: dsl.HTML
    onnx_model: dsl.Model
    model: dsl.Model


def build_pipeline(
    iterations: int = 1, preset: str = "paper", cluster: ClusterSettings = ClusterSettings()
) -> Callable:
    """The pipeline function for ``iterations`` rounds of Step 3 → Step 2; the form's defaults come from ``preset``.

    Raises:
        ValueError: ``iterations`` < 1 or an unknown preset.
    """
    from eqface.workflow.configure import form_choices, preset_form

    if iterations < 1:
        raise ValueError(f"iterations must be at least 1 (the model ends on a Step 2 after a Step 3), got {iterations}")
    form = preset_form(preset)
    form["eval_identities"] = form["eval_identities"] or DEFAULT_EVAL_IDENTITIES
    preset_name = preset

    def eqface_training(
        data_source: str = form["data_source"],
        data_location: str = form["data_location"],
        eval_identities: int = form["eval_identities"],
        backbone: str = form["backbone"],
        embedding_size: int = form["embedding_size"],
        step1_epochs: int = form["step1_epochs"],
        step1_lr: float = form["step1_lr"],
        step1_milestones: List[int] = form["step1_milestones"],
        step2_epochs: int = form["step2_epochs"],
        step2_lr: float = form["step2_lr"],
        step2_milestones: List[int] = form["step2_milestones"],
        step3_epochs: int = form["step3_epochs"],
        step3_lr: float = form["step3_lr"],
        step3_milestones: List[int] = form["step3_milestones"],
        margin_m1: float = form["margin_m1"],
        margin_m2: float = form["margin_m2"],
        margin_m3: float = form["margin_m3"],
        margin_scale: float = form["margin_scale"],
        qwdf_threshold: float = form["qwdf_threshold"],
        batch_size: int = form["batch_size"],
        precision: str = form["precision"],
        gpus_per_step: int = 1,
        model_repository: str = cluster.default_repository,
        serving_variant: str = "production",
        triton_url: str = "",
        accuracy_threshold: float = 0.9,
        min_quality_std: float = 0.05,
        data_materialize: str = "auto",
        preset: str = preset_name,
        overrides: List[str] = [],
    ) -> Outputs:
        """EQFace training: Steps 1 → 2 → (3 → 2) × N, evaluation, ONNX export and the deploy to Triton.

        Args:
            data_source: where the faces come from: {data_source}.
            data_location: the dataset: a path on the data volume (e.g. /mnt/data/ms1mv2/train.rec), an s3:// or
                gs:// location, or shared:<file> for a pack; empty for synthetic faces.
            eval_identities: identities held out of training for the evaluation (at least 2).
            backbone: the recognition network: {backbone}.
            embedding_size: length of the face embedding.
            step1_epochs: epochs of Step 1 (backbone and classifier, every sample weight 1).
            step1_lr: Step 1's initial learning rate.
            step1_milestones: Step 1's epochs at which the learning rate is divided by 10 (a JSON list).
            step2_epochs: epochs of each Step 2 (only the quality branch trains, through Eq. 6).
            step2_lr: Step 2's initial learning rate.
            step2_milestones: Step 2's epochs at which the learning rate is divided by 10 (a JSON list).
            step3_epochs: epochs of each Step 3 (the backbone retrains with the quality as sample weight).
            step3_lr: Step 3's initial learning rate.
            step3_milestones: Step 3's epochs at which the learning rate is divided by 10 (a JSON list).
            margin_m1: the combined margin's multiplicative angular margin m1 (1 for ArcFace).
            margin_m2: the combined margin's additive angular margin m2 (ArcFace's m).
            margin_m3: the combined margin's additive cosine margin m3 (CosFace's m).
            margin_scale: the logit scale S.
            qwdf_threshold: QWDF's s_th: Step 3 drops samples whose quality is below it (0 turns QWDF off).
            batch_size: training batch size per process.
            precision: the training arithmetic: {precision} (bf16/fp16 autocast the backbone; the quality branch and
                Eq. 6 stay fp32; fp16 needs GPUs).
            gpus_per_step: GPUs of each training step; above 1 the step trains with torchrun (DDP, NCCL).
            model_repository: the Triton model repository the deploy step writes a new version into (a path on
                the models volume, s3://bucket/path or gs://bucket/path).
            serving_variant: the Triton models to write: {serving_variant} (production: onnxruntime on GPU; local:
                the CPU python backend).
            triton_url: a running Triton with --model-control-mode=explicit to load the new version into
                (grpc://host:8001 or http://host:8000); empty: only write the version.
            accuracy_threshold: deploy gate: the lowest 10-fold verification accuracy on the held-out identities.
            min_quality_std: deploy gate: the lowest spread (std) of the held-out qualities.
            data_materialize: how prepare-data hands the faces on: {data_materialize} (pack copies them into the
                artifact, reference leaves them on the volume, auto packs small data).
            preset: the eqface preset for every setting this form does not show: {preset}.
            overrides: section.field=value settings applied last, as a JSON list (e.g. ["augment.blur_p=0.3"]; any
                key of eqface config).

        Returns:
            metrics: the deployed model's held-out figures and both candidates' (final, Step 1 → 2).
            report: the HTML evaluation report with its plots.
            onnx_model: the exported model.onnx.
            model: the PyTorch model it was exported from (final.pt, config.json, the training history).
        """
        config = configure(
            preset=preset,
            overrides=overrides,
            iterations=iterations,
            data_source=data_source,
            data_location=data_location,
            eval_identities=eval_identities,
            backbone=backbone,
            embedding_size=embedding_size,
            step1_epochs=step1_epochs,
            step1_lr=step1_lr,
            step1_milestones=step1_milestones,
            step2_epochs=step2_epochs,
            step2_lr=step2_lr,
            step2_milestones=step2_milestones,
            step3_epochs=step3_epochs,
            step3_lr=step3_lr,
            step3_milestones=step3_milestones,
            margin_m1=margin_m1,
            margin_m2=margin_m2,
            margin_m3=margin_m3,
            margin_scale=margin_scale,
            qwdf_threshold=qwdf_threshold,
            batch_size=batch_size,
            precision=precision,
            serving_variant=serving_variant,
            data_materialize=data_materialize,
        ).set_display_name("configure")
        _light(config, cluster, cpu="500m", memory="1Gi")
        cfg = config.outputs["config_json"]  # evaluate and export read all of it; the others a view (task_config)

        data = prepare_data(config_json=config.outputs["data_config"], materialize=data_materialize).set_display_name(
            "prepare data"
        )
        _light(data, cluster, cpu="4", memory="16Gi", cache=cluster.cache_data)
        _mount(data, cluster.data_pvc, cluster.data_mount)
        _object_store_secret(data, cluster)
        dataset = data.outputs["dataset"]

        def trained(component, stage: str, title: str, init=None):
            extra = {} if init is None else {"init_model": init.outputs["model"]}
            task = component(
                dataset=dataset,
                config_json=config.outputs[f"{stage.split('-')[0]}_config"],
                gpus=gpus_per_step,
                stage=stage,
                checkpoint_root=cluster.checkpoint_root,
                **extra,
            )
            _gpu_training(task.set_display_name(f"{stage}: {title}"), cluster, gpus_per_step)
            return task

        steps_1_2 = trained(
            train_quality, "step2-1", "train quality branch", trained(train_backbone, "step1", "train backbone")
        )
        model = steps_1_2
        for i in range(1, iterations + 1):
            weighted = trained(train_weighted, f"step3-{i}", "quality-weighted retraining", model)
            model = trained(train_quality, f"step2-{i + 1}", "train quality branch", weighted)
        final = model.outputs["model"]

        scores = evaluate(
            dataset=dataset,
            model=final,
            steps_1_2_model=steps_1_2.outputs["model"],
            config_json=cfg,
            accuracy_threshold=accuracy_threshold,
            min_quality_std=min_quality_std,
        ).set_display_name("evaluate")
        _light(scores, cluster, cpu="8", memory="32Gi")
        _mount(scores, cluster.data_pvc, cluster.data_mount)
        scores.set_env_variable("TQDM_MININTERVAL", "60")

        chosen = scores.outputs["chosen_model"]  # the better recogniser of the final and the Step 1 → 2 model
        onnx = export_onnx(model=chosen, dataset=dataset, config_json=cfg).set_display_name("export ONNX")
        _light(onnx, cluster, cpu="2", memory="8Gi")
        _mount(onnx, cluster.data_pvc, cluster.data_mount)

        with dsl.If(scores.outputs["deploy_approved"] == True, name="evaluation-passed"):  # noqa: E712 (a KFP condition)
            release = deploy_triton(
                onnx_model=onnx.outputs["onnx_model"],
                repository=model_repository,
                variant=serving_variant,
                triton_url=triton_url,
            ).set_display_name("deploy to Triton")
            # Writing a version into a repository is a side effect: never cached, never retried half-way.
            _light(release, cluster, cpu="1", memory="4Gi", cache=False)
            _mount(release, cluster.models_pvc, cluster.models_mount)
            _object_store_secret(release, cluster)
            _triton_control(release, cluster)

        return Outputs(
            metrics=scores.outputs["metrics"],
            report=scores.outputs["report"],
            onnx_model=onnx.outputs["onnx_model"],
            model=chosen,
        )

    # The choices in the form's descriptions come from where they are defined (one source: form_choices).
    eqface_training.__doc__ = eqface_training.__doc__.format(**{k: ", ".join(v) for k, v in form_choices().items()})
    return dsl.pipeline(
        name=PIPELINE_NAME,
        description=f"EQFace: Step 1 → 2 → (3 → 2) × {iterations} → evaluate (the final model against the Step 1 → 2 "
        f"model; the better recogniser goes on) → export ONNX → deploy to Triton when the evaluation passes. Form "
        f"defaults: preset {preset_name}.",
    )(eqface_training)


TRITON_CLIENT_LABEL = "eqface.io/triton-client"


def compile_pipeline(
    path: str | Path, iterations: int = 1, preset: str = "paper", cluster: ClusterSettings = ClusterSettings()
) -> Path:
    """Writes the pipeline YAML to upload in the Kubeflow UI; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(iterations, preset, cluster), str(path))
    return path


# ------------------------------------------------------------------------------------------- Kubernetes settings
def _light(task: dsl.PipelineTask, cluster: ClusterSettings, cpu: str, memory: str, cache: bool = True) -> None:
    task.set_container_image(cluster.image)
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    task.set_caching_options(cache)
    task.set_env_variable("PYTHONUNBUFFERED", "1")


def _gpu_training(task: dsl.PipelineTask, cluster: ClusterSettings, gpus) -> None:
    _light(task, cluster, cpu=cluster.train_cpu, memory=cluster.train_memory)
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    task.set_retry(
        num_retries=cluster.train_retries, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="900s"
    )
    task.set_env_variable("TQDM_MININTERVAL", "60")  # progress lines once a minute in the pod log, not per batch
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=cluster.shm_size
    )
    _mount(task, cluster.data_pvc, cluster.data_mount)
    _mount(task, cluster.work_pvc, cluster.work_mount)


def _mount(task: dsl.PipelineTask, pvc: str, mount_path: str) -> None:
    if pvc:
        kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=mount_path)


def _triton_control(task: dsl.PipelineTask, cluster: ClusterSettings) -> None:
    """What lets the deploy step control Triton's models: the pod label Triton's NetworkPolicy admits (with the
    pipeline's namespace, manifests/base/triton/networkpolicy.yaml) and the control key, a Secret mounted into this
    step only and read from the file ``EQFACE_TRITON_CONTROL_KEY_FILE`` names (eqface.serving.control)."""
    kubernetes.add_pod_label(task, TRITON_CLIENT_LABEL, "true")
    if not cluster.triton_control_secret:
        return
    # optional: a deploy that only writes the repository (no triton_url) runs without the secret
    kubernetes.use_secret_as_volume(
        task, secret_name=cluster.triton_control_secret, mount_path=CONTROL_KEY_MOUNT, optional=True
    )
    task.set_env_variable("EQFACE_TRITON_CONTROL_KEY_FILE", f"{CONTROL_KEY_MOUNT}/key")


def _object_store_secret(task: dsl.PipelineTask, cluster: ClusterSettings) -> None:
    if not cluster.object_store_secret:
        return
    kubernetes.use_secret_as_env(
        task, secret_name=cluster.object_store_secret, secret_key_to_env={k: k for k in OBJECT_STORE_ENV}, optional=True
    )
    kubernetes.use_secret_as_volume(
        task, secret_name=cluster.object_store_secret, mount_path=SECRET_MOUNT, optional=True
    )
    task.set_env_variable("EQFACE_GCS_CREDENTIALS", f"{SECRET_MOUNT}/{GCS_KEY_FILE}")
