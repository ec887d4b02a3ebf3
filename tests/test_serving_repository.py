"""Model repository: production config, local config and the ONNX file agree with the contract; layout on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from eqface import contract
from eqface.aggregation import Thresholds
from eqface.config import ModelConfig
from eqface.contract import InferenceSpec
from eqface.export.onnx import export_onnx
from eqface.models import build_model
from eqface.serving.launcher import TritonServer
from eqface.serving.metrics import parse_inference_counts
from eqface.serving.model_configs import (
    SPINNING_PARAMETER,
    THREADS_PARAMETER,
    VARIANTS,
    Batching,
    OnnxRuntimeSettings,
    model_configs,
    parse,
    render,
)
from eqface.serving.repository import CONFIG_FILE, write_model_repository

REPO_ROOT = Path(__file__).resolve().parents[1]
FP32 = mc.DataType.Value(contract.TRITON_FLOAT)
BYTES = mc.DataType.Value(contract.TRITON_BYTES)


@pytest.fixture(scope="module")
def default_size_onnx(tmp_path_factory) -> Path:
    """A small network at the contract's default sizes (112×112 in, 512-d out), exported for real."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone="tiny"))
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    export_onnx(net, InferenceSpec(), path)
    return path


@pytest.fixture(scope="module", params=VARIANTS)
def repository(request, default_size_onnx, tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp(f"repo_{request.param}")
    write_model_repository(default_size_onnx, root, variant=request.param)
    return request.param, root


def _load(root: Path, model: str) -> mc.ModelConfig:
    return parse((root / model / CONFIG_FILE).read_text())


def _io(tensors) -> dict[str, tuple[int, list[int]]]:
    return {t.name: (t.data_type, list(t.dims)) for t in tensors}


def _onnx_io(path: Path) -> dict[str, tuple[int, list[int]]]:
    model = onnx.load(str(path))
    fp32 = {onnx.TensorProto.FLOAT: FP32}
    return {
        v.name: (fp32[v.type.tensor_type.elem_type], [d.dim_value for d in v.type.tensor_type.shape.dim[1:]])
        for v in [*model.graph.input, *model.graph.output]
    }


def test_configs_onnx_and_contract_agree(repository, default_size_onnx):
    variant, root = repository
    spec = InferenceSpec()
    tensor_in = {contract.INPUT_NAME: (FP32, list(spec.input_shape))}
    bytes_in = {contract.IMAGE_BYTES_NAME: (BYTES, list(contract.IMAGE_BYTES_SHAPE))}
    outputs = {contract.EMBEDDING_NAME: (FP32, [contract.DEFAULT_EMBEDDING_SIZE]), contract.QUALITY_NAME: (FP32, [1])}

    onnx_model = _load(root, contract.ONNX_MODEL_NAME)
    assert onnx_model.name == contract.ONNX_MODEL_NAME
    declared = {**_io(onnx_model.input), **_io(onnx_model.output)}
    assert declared == {**tensor_in, **outputs} == _onnx_io(default_size_onnx)

    preprocess = _load(root, contract.PREPROCESS_MODEL_NAME)
    assert (_io(preprocess.input), _io(preprocess.output)) == (bytes_in, tensor_in)
    assert preprocess.backend == "python"

    ensemble = _load(root, contract.ENSEMBLE_MODEL_NAME)
    assert ensemble.platform == "ensemble"
    assert (_io(ensemble.input), _io(ensemble.output)) == (bytes_in, outputs)
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [contract.PREPROCESS_MODEL_NAME, contract.ONNX_MODEL_NAME]
    assert steps[0].output_map[contract.INPUT_NAME] == steps[1].input_map[contract.INPUT_NAME]
    assert dict(steps[1].output_map) == {name: name for name in outputs}

    for config in (onnx_model, preprocess, ensemble):
        assert config.max_batch_size == 64
    for config in (onnx_model, preprocess):
        # Triton's plain `dynamic_batching {}`: preferred sizes measured no better (serving/README.md).
        assert config.HasField("dynamic_batching")
        assert list(config.dynamic_batching.preferred_batch_size) == []
        assert config.dynamic_batching.max_queue_delay_microseconds == 0
    # Warm-up with one all-zero input of the contract's shape, on the model that runs the network.
    (warmup,) = onnx_model.model_warmup
    assert warmup.batch_size == 1 and list(warmup.inputs) == [contract.INPUT_NAME]
    zeros = warmup.inputs[contract.INPUT_NAME]
    assert (zeros.data_type, list(zeros.dims), zeros.zero_data) == (FP32, list(spec.input_shape), True)


def test_variants_differ_only_in_where_the_model_runs(repository):
    variant, root = repository
    config = _load(root, contract.ONNX_MODEL_NAME)
    (group,) = config.instance_group
    if variant == "production":
        assert (config.platform, config.backend) == ("", "onnxruntime")
        assert group.kind == mc.ModelInstanceGroup.KIND_GPU
        assert dict(config.parameters) == {}
        assert not config.HasField("optimization")  # TensorRT only when asked for
    else:
        assert (config.platform, config.backend) == ("", "python")
        assert group.kind == mc.ModelInstanceGroup.KIND_CPU
        assert config.parameters[SPINNING_PARAMETER].string_value == "0"


def test_version_folders_hold_the_model_files(repository, default_size_onnx):
    variant, root = repository
    onnx_dir = root / contract.ONNX_MODEL_NAME / "1"
    expected = {"model.onnx", "model.py"} if variant == "local" else {"model.onnx"}
    assert {p.name for p in onnx_dir.iterdir()} == expected
    assert (onnx_dir / "model.onnx").read_bytes() == default_size_onnx.read_bytes()
    assert {p.name for p in (root / contract.PREPROCESS_MODEL_NAME / "1").iterdir()} == {"model.py"}
    assert list((root / contract.ENSEMBLE_MODEL_NAME / "1").iterdir()) == []
    assert not [p for p in root.rglob(".*")], "no staging folders left behind"


def test_an_existing_version_is_kept_unless_overwrite(repository, default_size_onnx):
    variant, root = repository
    with pytest.raises(FileExistsError, match="version 1 already exists"):
        write_model_repository(default_size_onnx, root, variant=variant)
    write_model_repository(default_size_onnx, root, variant=variant, overwrite=True)
    write_model_repository(default_size_onnx, root, variant=variant, version=2)
    assert (root / contract.ONNX_MODEL_NAME / "2" / "model.onnx").is_file()


@pytest.mark.parametrize("variant", VARIANTS)
def test_committed_configs_match_the_renderer(variant):
    """serving/<variant>/ is the reference rendering for the default contract; it must not drift from the code."""
    for name, config in model_configs(InferenceSpec(), variant).items():
        committed = REPO_ROOT / "serving" / variant / name / CONFIG_FILE
        assert committed.read_text() == render(config, variant), f"regenerate {committed} (see serving/README.md)"


def test_onnxruntime_settings_reach_the_config():
    runtime = OnnxRuntimeSettings(threads=2, spinning=True)
    local = model_configs(InferenceSpec(), "local", runtime=runtime)[contract.ONNX_MODEL_NAME]
    assert local.parameters[THREADS_PARAMETER].string_value == "2"
    assert local.parameters[SPINNING_PARAMETER].string_value == "1"
    production = model_configs(InferenceSpec(), "production", runtime=runtime)[contract.ONNX_MODEL_NAME]
    assert dict(production.parameters).keys() == {THREADS_PARAMETER}


def test_the_tensorrt_fp16_block_follows_tritons_schema():
    """The production GPU variant's optional accelerator: rendered, then parsed back with Triton's ModelConfig."""
    runtime = OnnxRuntimeSettings(tensorrt_fp16=True)
    config = model_configs(InferenceSpec(), "production", runtime=runtime)[contract.ONNX_MODEL_NAME]
    parsed = parse(render(config, "production"))
    (accelerator,) = parsed.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"precision_mode": "FP16"}
    assert not parsed.optimization.execution_accelerators.cpu_execution_accelerator
    text = render(config, "production")
    assert 'name: "tensorrt"' in text and 'key: "precision_mode"' in text and 'value: "FP16"' in text
    # A typo in a field name is an error of the schema, not a silently ignored setting.
    with pytest.raises(text_format.ParseError, match="gpu_execution_acelerator"):
        parse(text.replace("gpu_execution_accelerator", "gpu_execution_acelerator"))
    with pytest.raises(ValueError, match="only in the production"):
        model_configs(InferenceSpec(), "local", runtime=runtime)


def test_calibrated_thresholds_become_config_parameters(tmp_path, default_size_onnx):
    calibrated = tmp_path / "calibrated.onnx"
    model = onnx.load(str(default_size_onnx))
    values = {**Thresholds(0.31, 0.12, 0.12).as_metadata(), contract.CALIBRATION_KEY: '{"fmr": 0.001}'}
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, calibrated)
    for variant in VARIANTS:
        write_model_repository(calibrated, tmp_path / variant, variant=variant)
        for name in (contract.ONNX_MODEL_NAME, contract.ENSEMBLE_MODEL_NAME):
            params = _load(tmp_path / variant, name).parameters
            assert {k: params[k].string_value for k in values} == values
        assert not set(values) & set(_load(tmp_path / variant, contract.PREPROCESS_MODEL_NAME).parameters)
    del model.metadata_props[1:]
    onnx.save(model, tmp_path / "partial.onnx")
    with pytest.raises(ValueError, match="lacks"):
        write_model_repository(tmp_path / "partial.onnx", tmp_path / "partial")
    with pytest.raises(ValueError, match="not a calibration key"):
        model_configs(InferenceSpec(), "local", calibration={"other": "1"})


def test_dynamic_batching_can_be_switched_off():
    configs = model_configs(InferenceSpec(), "local", Batching(dynamic=False))
    assert not configs[contract.ONNX_MODEL_NAME].HasField("dynamic_batching")
    assert configs[contract.ONNX_MODEL_NAME].max_batch_size == 64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"preferred_batch_sizes": (128,)}, "outside"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us"),
    ],
)
def test_batching_rejects_impossible_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Batching(**kwargs)


def test_write_refuses_a_model_outside_the_contract(tmp_path, default_size_onnx):
    model = onnx.load(str(default_size_onnx))
    model.graph.output[0].name = "features"
    for node in model.graph.node:
        node.output[:] = ["features" if n == contract.EMBEDDING_NAME else n for n in node.output]
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(ValueError, match="outputs are"):
        write_model_repository(tmp_path / "bad.onnx", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_launcher_rejects_bad_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="model repository not found"):
        TritonServer(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown model control mode"):
        TritonServer(tmp_path, model_control_mode="sometimes")
    with pytest.raises(ValueError, match="load_models needs"):
        TritonServer(tmp_path, load_models=["eqface"])


def test_launcher_environment_finds_the_wheel_and_this_interpreter(tmp_path):
    import sys
    import sysconfig

    env = TritonServer.environment(Path("/opt/libs"))
    assert env["LD_LIBRARY_PATH"].split(":")[:2] == ["/opt/libs", sysconfig.get_config_var("LIBDIR")]
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_inference_counts_are_read_per_model():
    text = "\n".join(
        [
            "# TYPE nv_inference_count counter",
            'nv_inference_count{model="eqface_onnx",version="1"} 128',
            'nv_inference_count{model="preprocess",version="1"} 5',
            "# TYPE nv_inference_exec_count counter",
            'nv_inference_exec_count{model="eqface_onnx",version="1"} 16',
            "# TYPE nv_inference_request_failure counter",
            'nv_inference_request_failure{model="eqface_onnx",reason="REJECTED",version="1"} 2',
            'nv_inference_request_failure{model="eqface_onnx",reason="BACKEND",version="1"} 1',
            "",
        ]
    )
    counts = parse_inference_counts(text, "eqface_onnx")
    assert (counts.inferences, counts.executions, counts.failures) == (128, 16, 3)
    assert counts.average_batch_size == 8.0
    assert parse_inference_counts(text, "eqface_onnx", version=2).inferences == 0
    assert np.isclose((counts - parse_inference_counts("", "eqface_onnx")).average_batch_size, 8.0)
