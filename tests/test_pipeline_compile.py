"""The compiled pipeline YAML (what a user uploads in the Kubeflow UI): wiring, parameters, GPUs, volumes, the gate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.images import TRAINING_IMAGE
from components.pipeline import ClusterSettings, compile_pipeline
from eqface.cli import main
from eqface.train.plan import step_plan
from eqface.workflow.configure import FORM_FIELDS

TRAINING_EXECUTORS = {"step1": "train-backbone", "step2": "train-quality", "step3": "train-weighted"}


def load(path: Path) -> tuple[dict, dict]:
    """(pipeline spec, Kubernetes platform spec) of a compiled file."""
    pipeline, platform = list(yaml.safe_load_all(path.read_text()))
    return pipeline, platform["platforms"]["kubernetes"]


@pytest.fixture(scope="module", params=[1, 2], ids=["1-iteration", "2-iterations"])
def compiled(request, tmp_path_factory) -> tuple[int, dict, dict]:
    path = compile_pipeline(tmp_path_factory.mktemp("yaml") / "pipeline.yaml", iterations=request.param)
    return (request.param, *load(path))


def tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def executor_of(spec: dict, task: dict) -> str:
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


def training_tasks(spec: dict) -> dict[str, dict]:
    return {name: t for name, t in tasks(spec).items() if name.startswith("train-")}


def test_the_chain_is_1_2_then_3_2_per_iteration_then_evaluate_export(compiled):
    iterations, spec, _ = compiled
    by_display = {t["taskInfo"]["name"].split(":")[0]: (name, t) for name, t in training_tasks(spec).items()}
    plan = [folder for _, folder in step_plan(iterations)]
    assert sorted(by_display) == sorted(plan)
    for previous, current in zip(plan, plan[1:]):
        name, task = by_display[current]
        assert task["dependentTasks"] == sorted([by_display[previous][0], "configure", "prepare-data"]), current
        init = task["inputs"]["artifacts"]["init_model"]["taskOutputArtifact"]
        assert init["producerTask"] == by_display[previous][0]
        assert name.startswith(TRAINING_EXECUTORS[current.split("-")[0]])
        # each step takes the configuration with only its own schedule (its cache key ignores the others')
        source = task["inputs"]["parameters"]["config_json"]["taskOutputParameter"]
        assert source == {"producerTask": "configure", "outputParameterKey": f"{current.split('-')[0]}_config"}
    final = by_display[plan[-1]][0]
    evaluate = tasks(spec)["evaluate"]["inputs"]["artifacts"]
    assert evaluate["model"]["taskOutputArtifact"]["producerTask"] == final
    assert evaluate["steps_1_2_model"]["taskOutputArtifact"]["producerTask"] == by_display["step2-1"][0]
    # export takes the recogniser evaluate chose (the final or the Step 1 → 2 model), not the final one blindly
    export = tasks(spec)["export-onnx"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
    assert export == {"producerTask": "evaluate", "outputArtifactKey": "chosen_model"}


def test_every_training_step_asks_for_gpus_cpu_memory_and_retries(compiled):
    _, spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    for name, task in training_tasks(spec).items():
        container = executors[executor_of(spec, task)]["container"]
        accelerator = container["resources"]["accelerator"]
        assert accelerator["resourceType"] == "nvidia.com/gpu"
        assert accelerator["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpus_per_step']}}"
        assert container["resources"]["cpuRequest"] == 8 and container["resources"]["memoryLimit"] == 64 * 2**30 / 1e9
        assert task["retryPolicy"]["maxRetryCount"] == 2
        assert task["inputs"]["parameters"]["gpus"]["componentInputParameter"] == "gpus_per_step"
        k8s = platform["deploymentSpec"]["executors"][executor_of(spec, task)]
        assert {m["mountPath"] for m in k8s["pvcMount"]} == {"/mnt/data", "/mnt/work"}
        assert k8s["emptyDirMounts"][0]["mountPath"] == "/dev/shm" and k8s["emptyDirMounts"][0]["medium"] == "Memory"
        assert k8s["tolerations"][0]["key"] == "nvidia.com/gpu"
    training = {executor_of(spec, t) for t in training_tasks(spec).values()}
    for label, executor in executors.items():
        if label not in training:
            assert "accelerator" not in executor["container"].get("resources", {}), label


def test_the_ui_form_exposes_every_training_and_deployment_parameter(compiled):
    _, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    expected = set(FORM_FIELDS) | {
        "gpus_per_step",
        "model_repository",
        "serving_variant",
        "triton_url",
        "accuracy_threshold",
        "min_quality_std",
        "data_materialize",
        "preset",
        "overrides",
    }
    assert set(params) == expected
    assert params["step1_milestones"]["defaultValue"] == [30, 60, 90]  # paper preset: ÷10 at 30/60/90
    assert params["margin_m2"]["defaultValue"] == 0.3 and params["margin_scale"]["defaultValue"] == 64.0
    assert params["backbone"]["defaultValue"] == "iresnet100"
    assert params["eval_identities"]["defaultValue"] >= 2  # the evaluate step needs held-out identities
    assert params["model_repository"]["defaultValue"] == "/mnt/models/eqface"


def test_every_form_parameter_has_a_description_and_choices_name_their_values(compiled):
    """The Kubeflow UI shows these beside each field (KFP reads them from the pipeline docstring's Args)."""
    from eqface.workflow.configure import form_choices

    _, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    missing = [name for name, p in params.items() if not p.get("description", "").strip()]
    assert not missing
    for name, allowed in form_choices().items():
        assert all(value in params[name]["description"] for value in allowed), name
        assert params[name]["defaultValue"] in allowed, name
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert all(o.get("description") for o in outputs.values())


def test_the_gate_output_is_named(compiled):
    _, spec, _ = compiled
    outputs = spec["components"]["comp-evaluate"]["outputDefinitions"]["parameters"]
    assert set(outputs) == {"deploy_approved", "chosen"}
    assert outputs["deploy_approved"]["parameterType"] == "BOOLEAN" and outputs["deploy_approved"]["description"]


def test_deploy_runs_only_when_evaluate_passes(compiled):
    _, spec, platform = compiled
    condition = tasks(spec)["condition-1"]
    gate = "inputs.parameter_values['pipelinechannel--evaluate-deploy_approved'] == true"
    assert condition["triggerPolicy"]["condition"] == gate
    assert condition["dependentTasks"] == ["evaluate", "export-onnx"]
    inner = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["deploy-triton"]
    deploy = inner["deploy-triton"]
    assert deploy["cachingOptions"] == {} and "retryPolicy" not in deploy  # side effect: never cached or retried
    assert "deploy-triton" not in tasks(spec)
    k8s = platform["deploymentSpec"]["executors"]["exec-deploy-triton"]
    assert k8s["pvcMount"][0]["mountPath"] == "/mnt/models"
    assert k8s["secretAsEnv"][0]["secretName"] == "eqface-object-store" and k8s["secretAsEnv"][0]["optional"]
    assert k8s["podMetadata"]["labels"] == {"eqface.io/triton-client": "true"}  # let through Triton's NetworkPolicy
    # The control key: a Secret mounted into the deploy step only, read from the file the variable names.
    volumes = {v["secretName"]: v for v in k8s["secretAsVolume"]}
    assert volumes["eqface-triton-control"]["mountPath"] == "/var/run/secrets/eqface-triton-control"
    env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"]["exec-deploy-triton"]["container"]["env"]}
    assert env["EQFACE_TRITON_CONTROL_KEY_FILE"] == "/var/run/secrets/eqface-triton-control/key"
    others = [k for name, k in platform["deploymentSpec"]["executors"].items() if name != "exec-deploy-triton"]
    assert not any(v["secretName"] == "eqface-triton-control" for k in others for v in k.get("secretAsVolume", []))


def test_caching_choices(compiled):
    _, spec, _ = compiled
    caching = {
        name: t.get("cachingOptions", {}).get("enableCache", False)
        for name, t in tasks(spec).items()
        if "cachingOptions" in t
    }
    assert caching.pop("prepare-data") is False
    assert all(caching.values()), caching


def test_every_step_runs_in_the_project_image_without_installing_kfp(compiled):
    _, spec, _ = compiled
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert executor["container"]["image"] == TRAINING_IMAGE, name
        assert "pip install" not in " ".join(executor["container"]["command"]), name


def test_cluster_settings_change_the_image_and_leave_out_volumes(tmp_path):
    cluster = ClusterSettings(
        image="registry.example.com/eqface-train:dev", data_pvc="", work_pvc="", object_store_secret="", cache_data=True
    )
    spec, platform = load(compile_pipeline(tmp_path / "p.yaml", cluster=cluster))
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {cluster.image}
    executors = platform["deploymentSpec"]["executors"]
    assert not any("pvcMount" in e for name, e in executors.items() if name != "exec-deploy-triton")
    assert tasks(spec)["prepare-data"]["cachingOptions"]["enableCache"] is True
    assert tasks(spec)["train-backbone"]["inputs"]["parameters"]["checkpoint_root"]["runtimeValue"]["constant"] == ""
    assert "run_id" not in tasks(spec)["train-backbone"]["inputs"]["parameters"]


def test_iterations_below_one_are_refused(tmp_path):
    with pytest.raises(ValueError, match="iterations"):
        compile_pipeline(tmp_path / "p.yaml", iterations=0)


def test_cli_compile_writes_the_yaml(tmp_path, capsys):
    out = tmp_path / "eqface.yaml"
    assert (
        main(
            [
                "pipeline",
                "compile",
                "--out",
                str(out),
                "--iterations",
                "3",
                "--preset",
                "demo",
                "--models-pvc",
                "serving-models",
            ]
        )
        == 0
    )
    spec, platform = load(out)
    assert len(training_tasks(spec)) == 2 + 2 * 3
    assert spec["root"]["inputDefinitions"]["parameters"]["backbone"]["defaultValue"] == "tiny"
    assert platform["deploymentSpec"]["executors"]["exec-deploy-triton"]["pvcMount"][0]["constant"] == "serving-models"
    assert str(out) in capsys.readouterr().out


def test_a_local_run_uses_no_cluster_paths():
    from components.local_run import local_cluster

    cluster = local_cluster()
    assert cluster.checkpoint_root == "" and cluster.default_repository == ""


def test_only_the_cli_imports_components():
    """components sits above eqface: a core module importing it would make a circle (components imports eqface)."""
    import ast

    import eqface

    package = Path(eqface.__file__).parent
    offenders = []
    for module in package.rglob("*.py"):
        if module.relative_to(package).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{module.relative_to(package)}: {n}" for n in names if n.split(".")[0] == "components"]
    assert not offenders
