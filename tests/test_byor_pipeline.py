"""The compiled bring-your-own-recogniser pipeline: its chain (no Step 1, no Step 3), its form, its caching, and the
settings the configure step validates."""

from __future__ import annotations

import json

import pytest
import yaml

from components.byor_pipeline import compile_byor_pipeline
from components.pipeline import ClusterSettings
from eqface.cli import main
from eqface.workflow.byor import ByorForm, data_config_json, form_defaults

CHAIN = [
    "configure-byor",
    "prepare-data",
    "import-recogniser",
    "train-quality-frozen",
    "evaluate-byor",
    "export-grafted",
]


def load(path) -> tuple[dict, dict]:
    pipeline, platform = list(yaml.safe_load_all(path.read_text()))
    return pipeline, platform["platforms"]["kubernetes"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    return load(compile_byor_pipeline(tmp_path_factory.mktemp("yaml") / "byor.yaml"))


def tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def producer(task: dict, artifact: str) -> str:
    return task["inputs"]["artifacts"][artifact]["taskOutputArtifact"]["producerTask"]


def test_the_chain_is_import_step2_evaluate_export_then_a_gated_deploy(compiled):
    spec, _ = compiled
    dag = tasks(spec)
    assert set(dag) == {*CHAIN, "condition-1"}
    assert not any(
        "backbone" in name or "weighted" in name or "step1" in name or "step3" in name for name in spec["components"]
    )
    assert dag["prepare-data"]["dependentTasks"] == ["configure-byor"]
    assert dag["prepare-data"]["inputs"]["parameters"]["materialize"]["runtimeValue"]["constant"] == "pack"
    assert producer(dag["import-recogniser"], "dataset") == "prepare-data"
    assert producer(dag["train-quality-frozen"], "recogniser") == "import-recogniser"
    for consumer in ("evaluate-byor", "export-grafted"):
        assert producer(dag[consumer], "model") == "train-quality-frozen"
        assert producer(dag[consumer], "dataset") == "prepare-data"
    condition = dag["condition-1"]
    assert condition["dependentTasks"] == ["evaluate-byor", "export-grafted"]
    assert condition["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--evaluate-byor-Output'] == true"
    )
    inner = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["deploy-triton"]  # the training pipeline's own deploy component
    onnx = inner["deploy-triton"]["inputs"]["artifacts"]["onnx_model"]["componentInputArtifact"]
    assert onnx == "pipelinechannel--export-grafted-onnx_model"


def test_every_form_parameter_is_described_and_defaults_to_the_library(compiled):
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    deployment = {"model_repository", "serving_variant", "triton_url", "accuracy_threshold", "min_quality_std"}
    assert set(params) == {"model_uri", *form_defaults(), *deployment}
    assert all(p.get("description") for p in params.values()), [
        n for n, p in params.items() if not p.get("description")
    ]
    assert "defaultValue" not in params["model_uri"]  # the one required parameter
    assert "s3://" in params["model_uri"]["description"] and "gs://" in params["model_uri"]["description"]
    for name, value in form_defaults().items():
        assert params[name].get("defaultValue", value) == value, name
    assert params["input_mean"]["defaultValue"] == [127.5] and params["epochs"]["defaultValue"] == 4
    assert params["model_repository"]["defaultValue"] == "/mnt/models/eqface"


def test_no_run_unique_value_reaches_a_task_and_only_data_and_deploy_skip_the_cache(compiled):
    spec, platform = compiled
    text = json.dumps(spec)
    assert "PIPELINE_JOB" not in text and "{{$.pipeline_job" not in text
    caching = {name: t.get("cachingOptions", {}).get("enableCache", False) for name, t in tasks(spec).items()}
    caching.pop("condition-1")
    assert caching == {name: name not in ("prepare-data", "import-recogniser") for name in CHAIN}
    step2 = tasks(spec)["train-quality-frozen"]
    assert step2["inputs"]["parameters"]["feature_root"]["runtimeValue"]["constant"] == "/mnt/work/checkpoints"
    assert step2["retryPolicy"]["maxRetryCount"] == 2
    executors = platform["deploymentSpec"]["executors"]
    assert executors["exec-train-quality-frozen"]["pvcMount"][0]["mountPath"] == "/mnt/work"
    assert executors["exec-import-recogniser"]["pvcMount"][0]["mountPath"] == "/mnt/data"
    assert executors["exec-import-recogniser"]["secretAsEnv"][0]["secretName"] == "eqface-object-store"
    assert executors["exec-deploy-triton"]["podMetadata"]["labels"] == {"eqface.io/triton-client": "true"}
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert "accelerator" not in executor["container"].get("resources", {}), name  # onnxruntime + a small head


def test_cached_data_and_no_volumes(tmp_path):
    cluster = ClusterSettings(work_pvc="", data_pvc="", models_pvc="", object_store_secret="", cache_data=True)
    spec, platform = load(compile_byor_pipeline(tmp_path / "p.yaml", cluster))
    assert all(t["cachingOptions"].get("enableCache") for n, t in tasks(spec).items() if n in CHAIN)
    assert tasks(spec)["train-quality-frozen"]["inputs"]["parameters"]["feature_root"]["runtimeValue"] == {
        "constant": ""
    }
    assert not any("pvcMount" in e for e in platform["deploymentSpec"]["executors"].values())


def test_cli_compile_byor_writes_the_yaml(tmp_path, capsys):
    out = tmp_path / "byor.yaml"
    assert main(["pipeline", "compile-byor", "--out", str(out), "--image", "registry.example/eqface:1"]) == 0
    spec, _ = load(out)
    assert spec["pipelineInfo"]["name"] == "eqface-byor"
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {
        "registry.example/eqface:1"
    }
    assert str(out) in capsys.readouterr().out


def test_the_form_is_validated_before_anything_runs():
    form = ByorForm(input_mean=[127, 127, 127], channel_order="BGR", image_size=[112, 112], epochs=2)
    options = form.import_options("faces.npz", 4)
    assert options.normalisation.channel_order == "BGR" and options.image_size == (112, 112)
    assert options.tap is None and options.output is None  # empty strings: found in the graph
    run = form.step2_run("faces.npz", 4)
    assert run.train.schedule.epochs == 2 and run.train.schedule.milestones == ()  # ÷10 at epoch 3 dropped
    assert ByorForm.from_json(form.to_json()) == form
    with pytest.raises(ValueError, match="channel_order"):
        ByorForm(channel_order="YUV")
    with pytest.raises(ValueError, match="mean"):
        ByorForm(input_mean=[1.0, 2.0])
    with pytest.raises(ValueError, match="classifier"):
        ByorForm(classifier="svm")
    with pytest.raises(ValueError, match="image_size"):
        ByorForm(image_size=[112])
    with pytest.raises(ValueError, match="epochs"):
        ByorForm(epochs=0)


def test_the_data_configuration_needs_held_out_identities_and_a_location():
    cfg = json.loads(data_config_json("npz", "s3://faces/pack.npz", 8, 4))
    assert cfg["data"]["path"] == "s3://faces/pack.npz" and cfg["data"]["eval_identities"] == 4
    assert cfg["data"]["max_identities"] == 8
    with pytest.raises(ValueError, match="at least 2"):
        data_config_json("npz", "pack.npz", 0, 1)
    with pytest.raises(ValueError, match="data_location"):
        data_config_json("folder", "", 0, 4)


def test_run_local_byor_refuses_an_unknown_form_name():
    from eqface.cli.byor_pipeline_cmd import form_values

    assert form_values(["epochs=2", "input_mean=[127.0]", "channel_order=BGR"]) == {
        "epochs": 2,
        "input_mean": [127.0],
        "channel_order": "BGR",
    }
    with pytest.raises(ValueError, match="classifier_epochs"):
        form_values(["epoch=2"])
