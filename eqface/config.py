"""Typed, frozen configuration for a training run; presets hold only their differences from the defaults.

The resolved config is serialised next to every output (``to_dict``/``config_from_dict``) and can be overridden
from the command line with dotted keys (``step1.lr=0.05``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from eqface import contract


@dataclass(frozen=True)
class ModelConfig:
    """Backbone + quality branch."""

    backbone: str = "iresnet100"
    embedding_size: int = contract.DEFAULT_EMBEDDING_SIZE
    image_size: tuple[int, int] = contract.DEFAULT_IMAGE_SIZE  # (height, width)
    dropout: float = 0.0
    quality_hidden: int = 512
    # 0: the quality branch flattens the whole pre-pooling map into its first FC (the official code); N > 0: a 1×1
    # convolution to N channels first (MobileFaceNet, N = 32: 21,504 → 1,344 inputs, 11 M → 0.7 M parameters).
    quality_reduce: int = 0
    pretrained: str = ""  # optional backbone weights (.npz state dict or an eqface model .pt; shared:<file> allowed)


@dataclass(frozen=True)
class MarginConfig:
    """Eq. 6: target logit s·S·(m1·cos(θ+m2) − m3), others s·S·cos θ."""

    m1: float = 1.0
    m2: float = 0.3
    m3: float = 0.2
    scale: float = 64.0


@dataclass(frozen=True)
class ScheduleConfig:
    """SGD with step decay; milestones are in epochs."""

    epochs: int = 100
    lr: float = 0.1
    milestones: tuple[int, ...] = (30, 60, 90)
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0


@dataclass(frozen=True)
class AugmentConfig:
    """Per-sample augmentations; each degradation is applied with its probability (0 disables it)."""

    hflip: bool = True
    resolution_drop_p: float = 0.5  # official EQFace code: downscale to 60/80/100 px and back
    resolution_sizes: tuple[int, ...] = (60, 80, 100)
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (1.0, 4.0)
    noise_p: float = 0.0
    noise_std: tuple[float, float] = (5.0, 40.0)
    occlusion_p: float = 0.0
    occlusion_frac: tuple[float, float] = (0.2, 0.5)
    lighting_p: float = 0.0  # directional shading + darkening, as uneven illumination
    lighting_strength: tuple[float, float] = (0.4, 1.0)


@dataclass(frozen=True)
class SyntheticConfig:
    """The built-in generator: identities drawn from a seed, with controllable degradations."""

    identities: int = 40
    images_per_identity: int = 24
    degraded_fraction: float = 0.3


@dataclass(frozen=True)
class DataConfig:
    """Where training faces come from.

    ``source`` (a name in ``eqface.data.factory.SOURCES``): ``synthetic``, ``npz`` (a pack), ``folder`` (one
    sub-folder per identity) or ``rec`` (insightface RecordIO .rec/.idx). ``path``: a file path, or
    ``shared:<file>`` for a file in the shared data folder (``eqface.paths``), so presets work from any directory.
    """

    source: Literal["synthetic", "npz", "folder", "rec"] = "synthetic"
    path: str = ""
    max_identities: int = 0  # 0 = all
    eval_identities: int = 0  # identities held out (the last ones by label) for verification after training
    min_images_per_identity: int = 2
    on_error: Literal["raise", "skip"] = "raise"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class ClassifierConfig:
    """Eq. 6's class centres: one full matrix on every rank, or Partial FC (``eqface.losses.partial_fc``).

    ``partial_fc`` shards the centres across the DDP ranks (a 2 M × 512 fp32 matrix is 4 GB per rank when full)
    and puts ``sample_rate`` of each shard in a batch's softmax: the batch's positive classes always, random
    negatives for the rest. ``sample_rate = 1`` is the exact full softmax, only sharded.
    """

    kind: Literal["full", "partial_fc"] = "full"
    sample_rate: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"classifier.sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.kind == "full" and self.sample_rate != 1.0:
            raise ValueError("classifier.sample_rate < 1 samples negatives, which needs classifier.kind=partial_fc")


@dataclass(frozen=True)
class TrainConfig:
    """The three-step pipeline 1 → 2 → (3 → 2) × iterations."""

    seed: int = 0
    batch_size: int = 128
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    step1: ScheduleConfig = field(default_factory=ScheduleConfig)
    step2: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(epochs=15, lr=0.01, milestones=(5, 10)))
    step3: ScheduleConfig = field(default_factory=ScheduleConfig)
    step1_train_backbone: bool = True  # False: only fit the classifier on a pretrained backbone (paper §5.2)
    classifier_init: Literal["random", "centers"] = "random"  # centers: class means of the backbone's embeddings
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    iterations: int = 1  # rounds of (Step 3 → Step 2) after 1 → 2
    step3_from_scratch: bool = False
    # Where Step 3 gets s_i: precomputed once per sample by the Step-2 network, online per augmented view, or
    # "none" (s_i = 1): the control arm of a QW experiment — the same retraining without quality weights.
    # "mean" (every s_i = the mean of the precomputed s_i) and "shuffled" (the precomputed s_i permuted across samples,
    # seeded) are E2's controls for QW's other effect: s_i < 1 also lowers the logit scale s·S and so the gradients.
    step3_quality: Literal["precomputed", "online", "none", "mean", "shuffled"] = "precomputed"
    # What Step 3 retrains: "all" (the paper) or "head" — only the embedding head after the pre-pooling map and the
    # classifier; the feature extractor stays as Step 1 left it (the small-data presets' guard against forgetting).
    step3_trainable: Literal["all", "head"] = "all"
    qwdf_threshold: float = 0.0  # QWDF: in Step 3, s_i < threshold counts as weight 0; 0 disables
    checkpoint_every: int = 50  # iterations between resumable checkpoints (and at every epoch end)
    # How the arithmetic runs (eqface.train.precision): fp32, bf16 autocast (CPU or GPU) or fp16 autocast with a grad
    # scaler (CUDA only). The quality branch, the classifier and the Eq. 6 loss stay fp32 in every mode.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False  # NHWC activations and weights for the convolutions
    compile: bool = False  # torch.compile the training forward pass


# Settings that change how fast a run computes, not what it trains: a run folder resumes when only they changed.
EXECUTION_FIELDS = {"train": ("precision", "channels_last", "compile")}


@dataclass(frozen=True)
class EQFaceConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    margin: MarginConfig = field(default_factory=MarginConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Step 2 must see samples the frozen network finds hard, so it gets realistic degradations.
    quality_augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(blur_p=0.3, noise_p=0.2, occlusion_p=0.2, lighting_p=0.3)
    )
    train: TrainConfig = field(default_factory=TrainConfig)


_CPU_SMALL_SCHEDULES: dict[str, Any] = {
    "step1": {"epochs": 12, "lr": 0.1, "milestones": (6, 9), "warmup_epochs": 1.0},
    "step2": {"epochs": 4, "lr": 0.01, "milestones": (2, 3)},
    "step3": {"epochs": 12, "lr": 0.1, "milestones": (6, 9), "warmup_epochs": 1.0},
}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "demo": {
        "model": {"backbone": "tiny", "embedding_size": 128, "quality_hidden": 64},
        "data": {"source": "synthetic", "eval_identities": 10, "synthetic": {"identities": 50}},
        "train": {"batch_size": 64, **_CPU_SMALL_SCHEDULES},
    },
    "test": {
        "model": {"backbone": "tiny", "embedding_size": 32, "quality_hidden": 16, "image_size": (32, 32)},
        "data": {"source": "synthetic", "eval_identities": 3, "synthetic": {"identities": 8, "images_per_identity": 8}},
        "augment": {"resolution_sizes": (12, 16, 24)},
        "train": {
            "batch_size": 16,
            "checkpoint_every": 2,
            "step1": {"epochs": 2, "lr": 0.05, "milestones": (1,)},
            "step2": {"epochs": 1, "lr": 0.01, "milestones": ()},
            "step3": {"epochs": 2, "lr": 0.05, "milestones": (1,)},
        },
    },
    "mobilefacenet-celeba": {
        "model": {
            "backbone": "mobilefacenet",
            "embedding_size": 128,
            "image_size": (112, 96),
            "pretrained": "shared:weights/mobilefacenet_casia_xiaoccer_068.npz",
            # The FIQA benchmark scores this branch as the flat 11 M-parameter one (attempts a1, a2), at 1/16 the size.
            "quality_reduce": 32,
        },
        "data": {"source": "npz", "path": "shared:celeba_wild_subset_rgb112.npz", "eval_identities": 40},
        "train": {
            "batch_size": 64,
            "classifier_init": "centers",
            "step1_train_backbone": False,
            "step1": {"epochs": 1, "lr": 0.01, "milestones": ()},
            "step2": {"epochs": 3, "lr": 0.01, "milestones": (2,)},
            # Step 3 on ~5.5 k faces: the whole network forgot the pretrained one (Yale TAR@FAR 1e-3 46.1 % → 18.9 %
            # with 2 epochs at lr 0.005), so only the embedding head retrains, for one epoch.
            "step3": {"epochs": 1, "lr": 0.005, "milestones": ()},
            "step3_trainable": "head",
        },
    },
}


def preset(name: str) -> EQFaceConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid names: {', '.join(sorted(PRESETS))}")
    return merge(EQFaceConfig(), PRESETS[name])


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


# Fields that no longer exist but are in configs written next to earlier runs and checkpoints: read and ignored.
_RETIRED = {"train": ("log_every",)}


def config_from_dict(data: dict[str, Any]) -> EQFaceConfig:
    """A stored config (``to_dict`` of an earlier run) as an EQFaceConfig; retired fields are ignored."""
    data = dict(data)
    for section, names in _RETIRED.items():
        if isinstance(data.get(section), dict):
            data[section] = {k: v for k, v in data[section].items() if k not in names}
    return merge(EQFaceConfig(), data)


def training_settings(cfg: EQFaceConfig) -> dict[str, Any]:
    """``to_dict(cfg)`` without :data:`EXECUTION_FIELDS`: what decides whether two runs train the same thing."""
    data = to_dict(cfg)
    for section, names in EXECUTION_FIELDS.items():
        for name in names:
            data[section].pop(name, None)
    return data


def merge(cfg: Any, changes: dict[str, Any]) -> Any:
    """Returns ``cfg`` with nested ``changes`` applied; values are coerced to the field types."""
    hints = typing.get_type_hints(type(cfg))
    known = {f.name for f in dataclasses.fields(cfg)}
    updates: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in known:
            raise ValueError(f"{type(cfg).__name__} has no field {key!r}; valid: {', '.join(sorted(known))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{key} is a section; give its fields (e.g. {key}.<field>=...)")
            updates[key] = merge(current, value)
        else:
            updates[key] = _coerce(value, hints[key], key)
    return dataclasses.replace(cfg, **updates)


def apply_overrides(cfg: EQFaceConfig, overrides: list[str]) -> EQFaceConfig:
    """Applies ``section.field=value`` strings (values parsed as JSON when possible, else taken as strings)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like section.field=value")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return merge(cfg, nested)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"{key} must be one of {typing.get_args(hint)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(hint)
        item_type = args[0]
        if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
            return tuple(_coerce(v, item_type, key) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{key} needs {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, t, key) for v, t in zip(value, args))
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if hint in (int, float, str):
        try:
            converted = hint(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a {hint.__name__}, got {value!r}") from None
        if hint is int and isinstance(value, float) and value != int(value):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return converted
    return value
