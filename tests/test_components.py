"""Each component's body through ``.python_func`` with real KFP artifact objects on temporary paths.

The chain is the pipeline's (configure → prepare data → 1 → 2 → 3 → 2 → evaluate → export → deploy) on the test
preset, shared by the module so that every step runs once; each test checks one component's outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from kfp import dsl

from components.configure import configure
from components.deploy_triton import deploy_triton
from components.evaluate import evaluate
from components.export_onnx import export_onnx
from components.prepare_data import prepare_data
from components.train_backbone import train_backbone
from components.train_quality import train_quality
from components.train_weighted import train_weighted
from eqface.workflow.configure import preset_form

pytestmark = pytest.mark.slow


def artifact(kind, root: Path, name: str):
    return kind(name=name, uri=str(root / name), metadata={})


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("components")


@pytest.fixture(scope="module")
def configuration():
    return configure.python_func(preset="test", overrides=["train.seed=3"], iterations=1, **form())


@pytest.fixture(scope="module")
def config_json(configuration) -> str:
    return configuration.config_json


def form(**changes) -> dict:
    """The configure step's form parameters: the test preset's, the two checked-only choices, then ``changes``."""
    return {**preset_form("test"), "serving_variant": "local", "data_materialize": "auto", **changes}


@pytest.fixture(scope="module")
def dataset(config_json, root):
    out = artifact(dsl.Dataset, root, "dataset")
    prepare_data.python_func(config_json=config_json, dataset=out)
    return out


@pytest.fixture(scope="module")
def chain(dataset, config_json, root) -> dict[str, dsl.Model]:
    models = {"step1": artifact(dsl.Model, root, "step1")}
    train_backbone.python_func(dataset=dataset, config_json=config_json, model=models["step1"])
    previous = models["step1"]
    for stage, component in (("step2-1", train_quality), ("step3-1", train_weighted), ("step2-2", train_quality)):
        models[stage] = artifact(dsl.Model, root, stage)
        component.python_func(
            dataset=dataset, init_model=previous, config_json=config_json, model=models[stage], stage=stage
        )
        previous = models[stage]
    return models


def evaluation_outputs(root: Path) -> dict:
    kinds = (
        ("metrics", dsl.Metrics),
        ("roc", dsl.ClassificationMetrics),
        ("report", dsl.HTML),
        ("summary", dsl.Markdown),
        ("chosen_model", dsl.Model),
    )
    return {name: artifact(kind, root, name) for name, kind in kinds}


@pytest.fixture(scope="module")
def evaluated(dataset, chain, config_json, root):
    outputs = evaluation_outputs(root)
    result = evaluate.python_func(
        dataset=dataset,
        model=chain["step2-2"],
        steps_1_2_model=chain["step2-1"],
        config_json=config_json,
        accuracy_threshold=0.0,
        **outputs,
    )
    return result, outputs


@pytest.fixture(scope="module")
def onnx_model(evaluated, dataset, config_json, root):
    out = artifact(dsl.Model, root, "onnx_model")
    export_onnx.python_func(
        model=evaluated[1]["chosen_model"], dataset=dataset, config_json=config_json, onnx_model=out
    )
    return out


def test_configure_resolves_the_form(config_json):
    cfg = json.loads(config_json)
    assert cfg["train"]["seed"] == 3 and cfg["train"]["iterations"] == 1 and cfg["model"]["backbone"] == "tiny"


def test_configure_gives_each_training_step_only_its_schedule(configuration):
    from eqface.workflow.configure import config_from_json, task_config

    cfg = config_from_json(configuration.config_json)
    for step in ("step1", "step2", "step3"):
        view = config_from_json(getattr(configuration, f"{step}_config"))
        assert view == task_config(cfg, step) and getattr(view.train, step) == getattr(cfg.train, step)
    assert config_from_json(configuration.data_config) == task_config(cfg, None)


def test_configure_rejects_a_form_that_would_fail_later():
    with pytest.raises(ValueError, match="held-out"):
        configure.python_func(preset="test", overrides=[], iterations=1, **form(eval_identities=0))


def test_configure_rejects_a_wrong_choice_with_the_allowed_values():
    with pytest.raises(ValueError, match="data_materialize='copy' is not one of: auto, pack, reference"):
        configure.python_func(preset="test", overrides=[], iterations=1, **form(data_materialize="copy"))


def test_prepare_data_writes_the_dataset_and_its_metadata(dataset):
    assert (Path(dataset.path) / "dataset.json").is_file() and (Path(dataset.path) / "faces.npz").is_file()
    assert dataset.metadata["images"] == 64 and dataset.metadata["held_out_identities"] == 3
    assert dataset.metadata["source"] == "synthetic" and dataset.metadata["packed"] is True


def test_each_training_step_leaves_its_model_and_the_history_so_far(chain):
    for stage, model in chain.items():
        files = {p.name for p in Path(model.path).iterdir()}
        assert {"final.pt", "config.json", "log.jsonl", "history.jsonl"} <= files, stage
        assert model.metadata["stage"] == stage and model.metadata["framework"] == "pytorch"
    history = [json.loads(line) for line in (Path(chain["step2-2"].path) / "history.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in history] == ["step1", "step1", "step2-1", "step3-1", "step3-1", "step2-2"]
    assert "final_quality_mean" in chain["step2-2"].metadata and "final_quality_mean" not in chain["step1"].metadata


def test_steps_2_and_3_continue_from_their_init_model(chain):
    import torch

    step1 = torch.load(Path(chain["step1"].path) / "final.pt", weights_only=True)
    step2 = torch.load(Path(chain["step2-1"].path) / "final.pt", weights_only=True)
    step3 = torch.load(Path(chain["step3-1"].path) / "final.pt", weights_only=True)
    backbone = [k for k in step1["net"] if k.startswith("backbone.")]
    quality = [k for k in step1["net"] if k.startswith("quality.")]
    assert all(torch.equal(step1["net"][k], step2["net"][k]) for k in backbone)  # Step 2 freezes the backbone
    assert all(torch.equal(step2["net"][k], step3["net"][k]) for k in quality)  # Step 3 freezes the quality branch
    assert not all(torch.equal(step2["net"][k], step3["net"][k]) for k in backbone)


def test_evaluate_logs_metrics_a_roc_and_reports_with_plots(evaluated):
    result, outputs = evaluated
    metrics = outputs["metrics"].metadata
    assert result.deploy_approved is True
    assert 0.0 <= metrics["verification_accuracy"] <= 1.0 and 0.0 <= metrics["quality_mean"] <= 1.0
    assert {"verification_auc", "quality_std", "quality_mean_blur", "spearman_quality_vs_degradation"} <= set(metrics)
    roc = outputs["roc"].metadata["confidenceMetrics"]
    assert len(roc) > 10 and all(0 <= p["falsePositiveRate"] <= 1 for p in roc)
    html = Path(outputs["report"].path).read_text()
    assert html.count("data:image/png;base64,") >= 4 and "Deployment gate" in html and "Model selection" in html
    assert "| 10-fold verification accuracy |" in Path(outputs["summary"].path).read_text()


def test_evaluate_passes_on_the_better_recogniser_of_the_two(evaluated, chain):
    """Both models' figures are in Metrics; the chosen model is a byte copy of the one with the better metric."""
    import hashlib

    result, outputs = evaluated
    metrics = outputs["metrics"].metadata
    for candidate in ("final", "steps_1_2"):
        assert {f"{candidate}_verification_accuracy", f"{candidate}_verification_auc"} <= set(metrics)
    rank = {
        c: (metrics.get(f"{c}_tar_at_far_1e-3", -1.0), metrics[f"{c}_verification_accuracy"])
        for c in ("final", "steps_1_2")
    }
    better = "final" if rank["final"] >= rank["steps_1_2"] else "steps_1_2"
    assert result.chosen == better and metrics["chosen_final"] == float(better == "final")
    assert metrics["verification_accuracy"] == metrics[f"{better}_verification_accuracy"]
    source = chain["step2-2" if better == "final" else "step2-1"]

    def digest(model) -> str:
        return hashlib.sha256((Path(model.path) / "final.pt").read_bytes()).hexdigest()

    assert digest(outputs["chosen_model"]) == digest(source)
    assert outputs["chosen_model"].metadata["chosen"] == better
    assert outputs["chosen_model"].metadata["stage"] == source.metadata["stage"]


def test_evaluate_fails_the_gate_below_the_threshold(dataset, chain, config_json, root):
    outputs = evaluation_outputs(root / "strict")
    result = evaluate.python_func(
        dataset=dataset,
        model=chain["step2-2"],
        steps_1_2_model=chain["step2-1"],
        config_json=config_json,
        accuracy_threshold=1.01,
        **outputs,
    )
    assert result.deploy_approved is False
    assert "FAIL: verification accuracy" in Path(outputs["report"].path).read_text()


def test_export_writes_a_contract_onnx_file_with_parity(onnx_model):
    from eqface.export.onnx import verify_onnx

    spec = verify_onnx(Path(onnx_model.path) / "model.onnx")
    assert spec.image_size == (32, 32) and spec.embedding_size == 32
    assert onnx_model.metadata["parity_max_abs_diff"] < 1e-4 and onnx_model.metadata["parity_images"] == 24


def test_deploy_writes_consecutive_versions_without_a_server(onnx_model, root):
    repository = root / "model_repository"
    first = deploy_triton.python_func(onnx_model=onnx_model, repository=str(repository), variant="local")
    second = deploy_triton.python_func(onnx_model=onnx_model, repository=str(repository), variant="local")
    assert (first.version, second.version) == (1, 2) and not first.loaded
    assert (repository / "eqface_onnx" / "2" / "model.onnx").is_file()
    assert (repository / "eqface_onnx" / "2" / "model.py").is_file()  # local variant: python backend


def test_a_step_under_torchrun_trains_with_ddp_on_cpu(dataset, config_json, root):
    """gpus > 1 launches torchrun --nproc_per_node (gloo on CPU here, NCCL on GPUs)."""
    model = artifact(dsl.Model, root, "ddp")
    train_backbone.python_func(dataset=dataset, config_json=config_json, model=model, gpus=2)
    assert model.metadata["processes"] == 2 and (Path(model.path) / "final.pt").is_file()


def test_a_retried_step_reuses_its_work_folder_on_the_checkpoint_volume(dataset, config_json, root):
    checkpoints = root / "work"
    first = artifact(dsl.Model, root, "try1")
    train_backbone.python_func(dataset=dataset, config_json=config_json, model=first, checkpoint_root=str(checkpoints))
    [work] = list(checkpoints.iterdir())
    assert work.name.startswith("step1-") and (work / "final.pt").is_file()
    # A second attempt of the same task (same inputs and stage) finds the finished step instead of retraining.
    stamp = (work / "final.pt").stat().st_mtime_ns
    retry = artifact(dsl.Model, root, "try2")
    train_backbone.python_func(dataset=dataset, config_json=config_json, model=retry, checkpoint_root=str(checkpoints))
    assert (work / "final.pt").stat().st_mtime_ns == stamp and len(list(checkpoints.iterdir())) == 1
    assert (Path(retry.path) / "final.pt").read_bytes() == (Path(first.path) / "final.pt").read_bytes()
    assert np.isclose(retry.metadata["final_loss"], first.metadata["final_loss"])


def test_the_checkpoint_folder_is_named_after_the_steps_inputs_not_the_run():
    from eqface.workflow.training import work_folder

    inputs = {"step": "step2", "config": "{}", "dataset": "s3://b/run-a/dataset", "init_model": "s3://b/m", "gpus": 1}
    folder = work_folder("/mnt/work", "step2-1", inputs)
    assert folder == work_folder("/mnt/work", "step2-1", dict(reversed(list(inputs.items()))))
    assert folder.parent == Path("/mnt/work") and folder.name.startswith("step2-1-")
    for changed in ({"dataset": "s3://b/run-b/dataset"}, {"config": '{"x": 1}'}, {"gpus": 2}):
        assert work_folder("/mnt/work", "step2-1", {**inputs, **changed}) != folder, changed
    assert work_folder("/mnt/work", "step2-2", inputs) != folder
    assert work_folder("", "step2-1", inputs) is None
