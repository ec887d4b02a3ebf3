"""KFP caching of the compiled pipeline: no cached task takes a value of the run, and a re-run with equal inputs
computes the same cache keys (the KFP backend's fingerprint, reproduced in ``tests/support/kfp_cache.py``), so it
reuses every finished step.
"""

from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl

from components.configure import configure
from components.pipeline import ClusterSettings, compile_pipeline
from tests.support.kfp_cache import (
    ServerCache,
    cache_key,
    fingerprint,
    go_json,
    is_cached,
    root_tasks,
    run_unique_inputs,
    simulate_run,
)

# kubeflow/pipelines backend/src/v2/cacheutils/cache_test.go, TestGenerateFingerPrint: keys and their fingerprints.
KFP_MODEL_SCHEMA = (
    "title: kfp.Model\ntype: object\nproperties:\n  framework:\n    type: string\n"
    "  framework_version:\n    type: string\n"
)


def configure_body(**parameters) -> dict:
    """The configure step's real body: its output values feed every other step's parameters."""
    return configure.python_func(**parameters)._asdict()


BODIES = {"configure": configure_body}


def load(path: Path) -> tuple[dict, dict]:
    pipeline, platform = list(yaml.safe_load_all(path.read_text()))
    return pipeline, platform["platforms"]["kubernetes"]


def test_the_fingerprint_is_kfps():
    """The two keys of KFP's own Go test give the fingerprints that test expects."""
    first = cache_key(
        input_artifact_names={"dataset_one": ["1"], "dataset_two": ["2"]},
        input_parameter_values={"message": "Some string value", "num_steps": 5},
        output_artifacts={
            "model": {"name": "model", "type": {"instanceSchema": KFP_MODEL_SCHEMA}, "metadata": {"name": "model"}},
            "metrics": {"name": "metrics", "type": {"schemaTitle": "kfp.Metrics"}, "metadata": {"name": "metrics"}},
        },
        output_parameter_types={"output_parameter_one": "STRING", "output_parameter_two": "INT"},
        cmd_args=["sh", "ec", "test"],
        image="python:3.11",
        pvc_names=[],
    )
    assert fingerprint(first) == "b498530c9016917298999ec0b01f364a180f8a3862bea0fa672a383ca3f22e4e"
    second = cache_key(
        input_artifact_names={"dataset": ["10"]},
        input_parameter_values={},
        output_artifacts={},
        output_parameter_types={"output_parameter": "DOUBLE"},
        cmd_args=["sh", "ec", "run"],
        image="python:3.11",
        pvc_names=[],
    )
    assert fingerprint(second) == "3d9a2a778fa3174c6cfc6e639c507c265b5f21ef6e5b1dd70b236462cc6da464"


@pytest.mark.parametrize(
    "value, expected",
    [
        (5, "5"),
        (1.0, "1"),
        (0.1, "0.1"),
        (1e-5, "0.00001"),
        (1e-7, "1e-7"),
        (2.5e-8, "2.5e-8"),
        (1e21, "1e+21"),
        (123456789.0, "123456789"),
        ('a<b>&c\n"é', '"a\\u003cb\\u003e\\u0026c\\n\\"é"'),
        ({"b": [True, None], "a": -0.5}, '{"a":-0.5,"b":[true,null]}'),
    ],
)
def test_values_are_written_as_go_encoding_json_writes_them(value, expected):
    assert go_json(value) == expected


@pytest.fixture(scope="module")
def compiled_twice(tmp_path_factory) -> list[tuple[dict, dict]]:
    """Two independent compilations with immutable data (``--cache-data``): what two runs of one upload see."""
    cluster = ClusterSettings(cache_data=True)
    root = tmp_path_factory.mktemp("cache")
    return [load(compile_pipeline(root / f"run{i}.yaml", iterations=2, cluster=cluster)) for i in (1, 2)]


def test_no_cached_task_takes_a_value_of_the_run(compiled_twice):
    spec, _ = compiled_twice[0]
    assert run_unique_inputs(spec) == {}
    assert sum(is_cached(t) for t in root_tasks(spec).values()) >= 8  # configure, data, 6 training steps, ...


def test_the_check_finds_a_run_id_among_a_cached_tasks_inputs(tmp_path):
    """The check above can fail: a step given the run id (what the training steps took before) is reported."""

    @dsl.component(base_image="python:3.11")
    def step(run_id: str) -> str:
        return run_id

    @dsl.pipeline(name="with-run-id")
    def pipeline():
        step(run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)

    compiler.Compiler().compile(pipeline, str(tmp_path / "p.yaml"))
    spec = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert run_unique_inputs(spec) == {"step": ["run_id={{$.pipeline_job_uuid}}"]}
    first, second = (simulate_run(spec, {}, {}, run, ServerCache()) for run in ("run-a", "run-b"))
    assert first["step"].fingerprint != second["step"].fingerprint


def test_a_rerun_with_equal_inputs_has_equal_keys_and_reuses_every_cached_step(compiled_twice):
    (spec1, platform1), (spec2, platform2) = compiled_twice
    cache = ServerCache()
    arguments = {"step2_epochs": 3, "overrides": ["train.seed=7"]}
    first = simulate_run(spec1, platform1, arguments, "3f1e-run-one", cache, BODIES)
    second = simulate_run(spec2, platform2, arguments, "9a0c-run-two", cache, BODIES)
    cached = {name for name, task in root_tasks(spec1).items() if is_cached(task)}
    assert cached >= {"configure", "prepare-data", "train-backbone", "evaluate", "export-onnx"}
    assert not any(first[name].cached for name in first)
    for name in cached:
        assert second[name].fingerprint == first[name].fingerprint, name
        assert second[name].cached, name
    assert not second["evaluate"].inputs.get("inputParameterValues", {}).get("run_id")


def test_changed_inputs_change_the_keys_of_the_steps_that_read_them(compiled_twice):
    (spec, platform), _ = compiled_twice
    cache = ServerCache()
    simulate_run(spec, platform, {}, "run-one", cache)
    changed = simulate_run(spec, platform, {"accuracy_threshold": 0.5}, "run-two", cache)
    # the gate's threshold is an input of evaluate only; export follows because it exports evaluate's choice
    missed = {name for name, task in changed.items() if task.fingerprint and not task.cached}
    assert missed == {"evaluate", "export-onnx"}
    other = simulate_run(spec, platform, {"step1_epochs": 2}, "run-three", cache)
    assert not other["configure"].cached and not other["train-backbone"].cached and not other["export-onnx"].cached


def test_with_data_re_read_each_run_only_the_configure_step_is_reused(tmp_path):
    """The default (``cache_data=False``): the data at a location may change, so prepare-data reruns and makes new
    artifacts, and every step after it misses the cache, as the documentation says."""
    spec, platform = load(compile_pipeline(tmp_path / "p.yaml"))
    cache = ServerCache()
    simulate_run(spec, platform, {}, "run-one", cache)
    second = simulate_run(spec, platform, {}, "run-two", cache)
    assert second["configure"].cached and second["prepare-data"].fingerprint is None
    assert not any(second[name].cached for name in second if name != "configure")


def test_a_new_step_3_setting_reruns_step_3_and_what_follows_only(compiled_twice):
    """Each training step takes the configuration without the other steps' schedules (task_config), so a new
    Step 3 learning rate leaves the keys of the data step, Step 1 and the first Step 2 as they were."""
    (spec, platform), _ = compiled_twice
    cache = ServerCache()
    simulate_run(spec, platform, {}, "run-one", cache, BODIES)
    changed = simulate_run(spec, platform, {"step3_lr": 0.05}, "run-two", cache, BODIES)
    by_stage = {t["taskInfo"]["name"].split(":")[0]: name for name, t in root_tasks(spec).items()}
    reused = {name for name, task in changed.items() if task.cached}
    assert reused == {"prepare-data", by_stage["step1"], by_stage["step2-1"]}
    assert not changed["configure"].cached and not changed[by_stage["step3-1"]].cached
    again = simulate_run(spec, platform, {"step1_epochs": 2}, "run-three", cache, BODIES)
    assert {name for name, task in again.items() if task.cached} == {"prepare-data"}
