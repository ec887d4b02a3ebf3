"""Triton ``config.pbtxt`` for the three served models, built from :mod:`eqface.contract` as typed protobuf messages.

Two variants share names, dtypes and shapes: ``production`` runs the ONNX file on Triton's onnxruntime backend on GPU;
``local`` runs the same file through onnxruntime inside a python-backend model, the only backend that the server in
the nvidia-pytriton wheel has. Both put the ``preprocess`` python model and the ``eqface`` ensemble (encoded image
bytes in, embedding and quality out) in front of it.

The model's calibrated aggregation thresholds (ONNX metadata, ``eqface.contract.THRESHOLD_KEYS``) are copied into the
``parameters`` of ``eqface_onnx`` and of the ensemble, where the aggregation service reads them from whichever of the
two it calls. An int8 file (``eqface.export.quantize``) is served by the same three models; its precision is a
parameter of both (``contract.PRECISION_KEY``), and in the production variant it runs on CPU instances, where
onnxruntime has int8 kernels. Batching defaults follow Triton's guidance and the measurement in serving/README.md
(``bench/bench_triton.py``): plain ``dynamic_batching {}``; preferred sizes did not help.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from eqface import contract
from eqface.contract import InferenceSpec

Variant = Literal["production", "local"]
VARIANTS: tuple[Variant, ...] = ("production", "local")
ONNX_FILE = "model.onnx"
PYTHON_FILE = "model.py"
# Model-config parameters of eqface_onnx. Triton's onnxruntime backend reads the thread count too; the spinning switch
# exists only in the local python-backend model.
THREADS_PARAMETER = "intra_op_thread_count"
SPINNING_PARAMETER = "allow_spinning"
# Ensemble-internal tensor between preprocess and eqface_onnx.
_PREPROCESSED = "preprocessed"
_HEADER = (
    "# Rendered by eqface.serving.model_configs from eqface/contract.py: edit the code, not this file.\n"
    "# Variant: {variant}. Regenerate: eqface serve repository --variant {variant} --out DIR [MODEL.onnx]\n"
)
_FP32 = mc.DataType.Value(contract.TRITON_FLOAT)
_BYTES = mc.DataType.Value(contract.TRITON_BYTES)


@dataclass(frozen=True)
class Batching:
    """Request batching of the served models; the same numbers go to every model of a repository.

    ``max_queue_delay_us`` bounds how long the first queued request waits for others; requests that arrive while an
    execution runs are batched without any added delay.
    """

    max_batch_size: int = 64
    dynamic: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be ≥ 1, got {self.max_batch_size}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred batch sizes {bad} are outside 1..max_batch_size={self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be ≥ 0, got {self.max_queue_delay_us}")


DEFAULT_BATCHING = Batching()


@dataclass(frozen=True)
class OnnxRuntimeSettings:
    """CPU onnxruntime settings of ``eqface_onnx``.

    ``spinning`` lets idle intra-op threads busy-wait for work: fastest when onnxruntime owns its cores, but in a
    server the spinning threads take CPU from the gRPC, batching and python-backend threads beside them (on 2 shared
    cores it cut Triton's throughput by a third or more here), so the local variant turns it off.
    """

    threads: int = 0  # intra-op threads; 0: onnxruntime's default (every core)
    spinning: bool = False
    tensorrt_fp16: bool = False  # production only: onnxruntime's TensorRT execution provider at FP16 on the GPU

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"threads must be ≥ 0, got {self.threads}")


DEFAULT_RUNTIME = OnnxRuntimeSettings()


def _tensor(name: str, data_type: int, dims: tuple[int, ...]) -> dict:
    return {"name": name, "data_type": data_type, "dims": list(dims)}


def _batched(config: mc.ModelConfig, batching: Batching) -> None:
    config.max_batch_size = batching.max_batch_size
    if batching.dynamic:
        config.dynamic_batching.SetInParent()  # `dynamic_batching {}` even with every field at its default
        config.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us


def _warmup(config: mc.ModelConfig, spec: InferenceSpec) -> None:
    # One all-zero input of the contract's shape: the first real request then does not pay for onnxruntime's
    # (or TensorRT's) first-run allocations and kernel selection.
    warmup = config.model_warmup.add(name="zeros", batch_size=1)
    tensor = warmup.inputs[contract.INPUT_NAME]
    tensor.data_type, tensor.zero_data = _FP32, True
    tensor.dims.extend(spec.input_shape)


def _tensorrt_fp16(config: mc.ModelConfig) -> None:
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    accelerator.parameters["precision_mode"] = "FP16"


def _precision(config: mc.ModelConfig, precision: str) -> None:
    if precision not in contract.PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(contract.PRECISIONS)}")
    if precision != "fp32":  # fp32 configs stay as they always were
        config.parameters[contract.PRECISION_KEY].string_value = precision


def _calibrated(config: mc.ModelConfig, calibration: Mapping[str, str] | None) -> None:
    for key, value in (calibration or {}).items():
        if key not in (*contract.THRESHOLD_KEYS, contract.CALIBRATION_KEY):
            raise ValueError(f"{key!r} is not a calibration key of eqface.contract")
        config.parameters[key].string_value = value


def onnx_model_config(
    spec: InferenceSpec,
    variant: Variant,
    batching: Batching,
    runtime: OnnxRuntimeSettings = DEFAULT_RUNTIME,
    calibration: Mapping[str, str] | None = None,
    precision: str = "fp32",
) -> mc.ModelConfig:
    """``eqface_onnx``: float32 [N, 3, H, W] → embedding [N, D], quality [N, 1].

    ``calibration``: the model's threshold metadata (``contract.THRESHOLD_KEYS`` and ``CALIBRATION_KEY``), copied
    into ``parameters``. ``precision``: of the ONNX file; int8 runs on CPU instances in both variants.
    """
    config = mc.ModelConfig(
        name=contract.ONNX_MODEL_NAME,
        input=[mc.ModelInput(**_tensor(contract.INPUT_NAME, _FP32, spec.input_shape))],
        output=[
            mc.ModelOutput(**_tensor(contract.EMBEDDING_NAME, _FP32, spec.embedding_shape)),
            mc.ModelOutput(**_tensor(contract.QUALITY_NAME, _FP32, spec.quality_shape)),
        ],
    )
    _batched(config, batching)
    if runtime.tensorrt_fp16 and variant != "production":
        raise ValueError("the TensorRT FP16 accelerator exists only in the production (GPU) variant")
    if runtime.tensorrt_fp16 and precision != "fp32":
        raise ValueError(f"the TensorRT FP16 accelerator runs fp32 files, not {precision}")
    if variant == "production":
        config.backend = "onnxruntime"
        config.default_model_filename = ONNX_FILE
        kind = mc.ModelInstanceGroup.KIND_GPU if precision == "fp32" else mc.ModelInstanceGroup.KIND_CPU
        config.instance_group.add(kind=kind, count=1)
        if runtime.tensorrt_fp16:
            _tensorrt_fp16(config)
    else:
        config.backend = "python"
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
        config.parameters[SPINNING_PARAMETER].string_value = str(int(runtime.spinning))
    if runtime.threads:
        config.parameters[THREADS_PARAMETER].string_value = str(runtime.threads)
    _precision(config, precision)
    _calibrated(config, calibration)
    _warmup(config, spec)
    return config


def preprocess_model_config(spec: InferenceSpec, variant: Variant, batching: Batching) -> mc.ModelConfig:
    """``preprocess``: encoded JPEG/PNG bytes [N, 1] → the model input [N, 3, H, W], exactly as in training."""
    config = mc.ModelConfig(
        name=contract.PREPROCESS_MODEL_NAME,
        backend="python",
        input=[mc.ModelInput(**_tensor(contract.IMAGE_BYTES_NAME, _BYTES, spec.image_bytes_shape))],
        output=[mc.ModelOutput(**_tensor(contract.INPUT_NAME, _FP32, spec.input_shape))],
    )
    _batched(config, batching)
    # Decoding is CPU work in both variants; production has cores to spare for a second instance.
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=2 if variant == "production" else 1)
    return config


def ensemble_config(
    spec: InferenceSpec,
    batching: Batching,
    calibration: Mapping[str, str] | None = None,
    precision: str = "fp32",
) -> mc.ModelConfig:
    """``eqface``: encoded image bytes [N, 1] → embedding [N, D], quality [N, 1] (preprocess → eqface_onnx)."""
    config = mc.ModelConfig(
        name=contract.ENSEMBLE_MODEL_NAME,
        platform="ensemble",
        max_batch_size=batching.max_batch_size,
        input=[mc.ModelInput(**_tensor(contract.IMAGE_BYTES_NAME, _BYTES, spec.image_bytes_shape))],
        output=[
            mc.ModelOutput(**_tensor(contract.EMBEDDING_NAME, _FP32, spec.embedding_shape)),
            mc.ModelOutput(**_tensor(contract.QUALITY_NAME, _FP32, spec.quality_shape)),
        ],
    )
    steps = config.ensemble_scheduling.step
    steps.add(
        model_name=contract.PREPROCESS_MODEL_NAME,
        model_version=-1,
        input_map={contract.IMAGE_BYTES_NAME: contract.IMAGE_BYTES_NAME},
        output_map={contract.INPUT_NAME: _PREPROCESSED},
    )
    steps.add(
        model_name=contract.ONNX_MODEL_NAME,
        model_version=-1,
        input_map={contract.INPUT_NAME: _PREPROCESSED},
        output_map={contract.EMBEDDING_NAME: contract.EMBEDDING_NAME, contract.QUALITY_NAME: contract.QUALITY_NAME},
    )
    _precision(config, precision)
    _calibrated(config, calibration)
    return config


def model_configs(
    spec: InferenceSpec,
    variant: Variant,
    batching: Batching = DEFAULT_BATCHING,
    runtime: OnnxRuntimeSettings = DEFAULT_RUNTIME,
    calibration: Mapping[str, str] | None = None,
    precision: str = "fp32",
) -> dict[str, mc.ModelConfig]:
    """The three model configs of one repository, by model name (``calibration``, ``precision``: see
    ``onnx_model_config``)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    configs = [
        onnx_model_config(spec, variant, batching, runtime, calibration, precision),
        preprocess_model_config(spec, variant, batching),
        ensemble_config(spec, batching, calibration, precision),
    ]
    return {c.name: c for c in configs}


def render(config: mc.ModelConfig, variant: Variant) -> str:
    """config.pbtxt text for one model, with a header saying where it comes from."""
    return _HEADER.format(variant=variant) + text_format.MessageToString(config)


def parse(text: str) -> mc.ModelConfig:
    """Parses config.pbtxt text with Triton's own ModelConfig schema (unknown fields are errors)."""
    return text_format.Parse(text, mc.ModelConfig())
