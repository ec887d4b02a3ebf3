"""The input normalisation a pretrained recogniser expects: (pixel − mean) / std per channel, in RGB or BGR order.

The served model keeps the project's one contract (RGB, (x − 127.5)/128, :mod:`eqface.contract`); ``from_contract``
gives the per-channel affine map that converts a contract input into what the recogniser expects, so it can be
written into the graph (channel flip first, then ``x·scale + bias`` in the recogniser's channel order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from eqface import contract

ChannelOrder = Literal["RGB", "BGR"]
CHANNEL_ORDERS: tuple[ChannelOrder, ...] = ("RGB", "BGR")


def _per_channel(values: float | tuple[float, ...] | list[float], name: str) -> tuple[float, float, float]:
    items = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(items) == 1:
        items = items * contract.CHANNELS
    if len(items) != contract.CHANNELS:
        raise ValueError(f"{name} needs 1 or {contract.CHANNELS} values, got {len(items)}")
    if not all(np.isfinite(items)):
        raise ValueError(f"{name} must be finite, got {items}")
    return (items[0], items[1], items[2])


@dataclass(frozen=True)
class InputNormalisation:
    """``(pixel − mean) / std`` on uint8 pixels in ``channel_order``; mean and std are in that same order."""

    mean: tuple[float, float, float] = (contract.PIXEL_MEAN,) * 3
    std: tuple[float, float, float] = (contract.PIXEL_SCALE,) * 3
    channel_order: ChannelOrder = "RGB"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _per_channel(self.mean, "mean"))
        object.__setattr__(self, "std", _per_channel(self.std, "std"))
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must not be 0, got {self.std}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")

    @property
    def flips_channels(self) -> bool:
        return self.channel_order == "BGR"

    def apply(self, images_rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB images [N, H, W, 3] → the recogniser's float32 input [N, 3, H, W]."""
        x = images_rgb.astype(np.float32)
        if self.flips_channels:
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def from_contract(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, bias) [3] with recogniser_input = contract_input·scale + bias, after the channel flip.

        Contract input c = (p − 127.5)/128 gives p = 128·c + 127.5, so
        (p − mean)/std = c·(128/std) + (127.5 − mean)/std.
        """
        mean, std = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
        scale = contract.PIXEL_SCALE / std
        bias = (contract.PIXEL_MEAN - mean) / std
        return scale.astype(np.float32), bias.astype(np.float32)

    def flipped(self) -> InputNormalisation:
        """The same numbers with the other channel order (the check's most common mistake)."""
        other: ChannelOrder = "RGB" if self.flips_channels else "BGR"
        return InputNormalisation(self.mean[::-1], self.std[::-1], other)  # type: ignore[arg-type]

    def describe(self) -> str:
        def fmt(values: tuple[float, ...]) -> str:
            return f"{values[0]:g}" if len(set(values)) == 1 else "(" + ", ".join(f"{v:g}" for v in values) + ")"

        return f"{self.channel_order}, (x − {fmt(self.mean)}) / {fmt(self.std)}"

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "channel_order": self.channel_order}

    @classmethod
    def from_dict(cls, data: dict) -> InputNormalisation:
        return cls(tuple(data["mean"]), tuple(data["std"]), data["channel_order"])


# Settings seen in public face recognisers: the check compares the user's setting against these and the channel flip.
COMMON_SETTINGS: dict[str, InputNormalisation] = {
    "(x-127.5)/128": InputNormalisation(),
    "(x-127.5)/127.5": InputNormalisation(std=(127.5,) * 3),
    "x/255": InputNormalisation(mean=(0.0,) * 3, std=(255.0,) * 3),
    "imagenet": InputNormalisation(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)),
    "raw pixels": InputNormalisation(mean=(0.0,) * 3, std=(1.0,) * 3),
}
