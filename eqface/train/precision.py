"""Mixed-precision training: autocast for the backbone, a grad scaler for fp16, channels_last and torch.compile.

What runs in which precision (the same split as insightface's arcface_torch, which autocasts the backbone and casts
the logits to fp32 before the margin):

- the backbone (convolutions, BatchNorm, the embedding head) runs under ``torch.autocast`` in bf16 or fp16;
- the quality branch runs in fp32 (``eqface.models.quality``): s_i comes out of a sigmoid and saturates towards 1;
  bf16 keeps 8 significant bits, so every s_i above ≈ 0.998 would round to exactly 1, and Eq. 6 multiplies s_i by
  S = 64, which turns a rounding error of up to 2⁻⁹ into a logit error of up to 0.125;
- the classifier and the Eq. 6 loss run in fp32 (``StepModel._eq6``): the embedding is cast up before the
  cosines, because the margin cos(θ + m2) goes through sin θ = sqrt(1 − cos² θ), whose error near cos θ = 1 is the
  error of cos θ divided by sin θ (bf16 rounds cos θ ≈ 0.995 by up to 0.002, which moves θ = 0.1 rad by 0.02 rad,
  a fifteenth of m2 = 0.3), and the softmax over s·S-scaled logits needs fp32's sums. Unlike arcface_torch, the full
  classifier's matmul is fp32 as well: below ~100 k classes it is a small part of the step (Partial FC, for
  millions of classes, computes its logits in fp32 too).

Master weights and optimizer state stay fp32 in every mode (autocast casts per operation), so a checkpoint holds the
same tensors whatever the precision and resumes in any other; only fp16's grad-scaler state is added, and dropped
when resuming in another precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SCALER_KEY = "grad_scaler"  # fp16's scaler state in a resumable checkpoint


@dataclass
class Precision:
    """How one training run computes: autocast dtype, fp16's grad scaler, the images' memory format.

    Built by :func:`resolve_precision`; the trainer runs each batch's forward pass in :meth:`autocast` and its update
    through :meth:`backward_and_step`.
    """

    name: str
    device_type: str
    channels_last: bool = False
    scaler: torch.amp.GradScaler | None = None

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype; None for fp32 (no autocast)."""
        return _DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The region the forward pass runs in: autocast to bf16/fp16, or nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """A batch in the memory format the network was converted to (:func:`to_memory_format`)."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """One optimizer update from ``loss``; with fp16's scaler the loss is scaled before backward and the
        gradients unscaled and checked for inf/NaN (a step with overflowed gradients is skipped, the scale lowered)."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """What a resumable checkpoint stores: the precision's name and, for fp16, the scaler's state."""
        state: dict[str, Any] = {"precision": self.name}
        if self.scaler is not None:
            state[SCALER_KEY] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the scaler when both the checkpoint and this run have one. A checkpoint from another precision
        resumes too: weights and optimizer state are fp32 in every mode; an fp16 scale is dropped in bf16/fp32 and a
        bf16/fp32 checkpoint starts fp16 with a fresh scale."""
        if self.scaler is not None and SCALER_KEY in state:
            self.scaler.load_state_dict(state[SCALER_KEY])


def resolve_precision(name: str, device: torch.device | str, channels_last: bool = False) -> Precision:
    """Checks ``train.precision`` against the device the run trains on; fp16 gets a grad scaler.

    Raises:
        ValueError: an unknown name, or fp16 on a device other than CUDA (fp16 needs a grad scaler, which this
            trainer runs on CUDA only; bf16 has fp32's exponent range, needs no scaler, and is what CPUs accelerate).
    """
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; valid: {', '.join(PRECISIONS)}")
    device_type = torch.device(device).type
    if name != "fp16":
        return Precision(name, device_type, channels_last)
    if device_type != "cuda":
        raise ValueError(
            f"train.precision=fp16 needs a CUDA device (it trains with a CUDA grad scaler), not {device_type}: "
            "use train.precision=bf16 on CPU"
        )
    # arcface_torch's setting: try a larger scale after 100 overflow-free steps instead of the default 2000.
    return Precision(name, device_type, channels_last, torch.amp.GradScaler("cuda", growth_interval=100))


@contextlib.contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """A region that runs in fp32 even inside an autocast region (callers cast their inputs with ``.float()``)."""
    with torch.autocast(device_type, enabled=False):
        yield


def to_memory_format(module: nn.Module, channels_last: bool) -> nn.Module:
    """channels_last (NHWC) lets cuDNN's and oneDNN's convolution kernels skip layout transposes; parameters keep
    their values and names, so checkpoints are unchanged."""
    return module.to(memory_format=torch.channels_last) if channels_last else module


def maybe_compile(module: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile`` wraps the module for the forward pass only; the state dicts are read from the unwrapped
    module (a compiled module's keys gain an ``_orig_mod.`` prefix, which checkpoints must not see)."""
    return torch.compile(module) if enabled else module
