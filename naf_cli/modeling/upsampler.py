"""The contract every upsampler follows, so callers never ask which kind they hold."""

from __future__ import annotations

import torch
from torch import nn

from naf_cli.errors import ShapeError


class Upsampler(nn.Module):
    """``forward(image, features, output_size)``: features [B, C, h, w] -> [B, C, H, W].

    ``image`` is [B, 3, H_img, W_img], RGB in [0, 1], of any size; upsamplers that ignore
    it accept it all the same. Subclasses override ``check_channels`` when they cannot take
    every channel count, and ``peak_bytes`` when one forward needs more than its output.
    """

    def check_channels(self, channels: int) -> None:
        """Raise ShapeError if features with ``channels`` channels cannot be upsampled (any can here)."""
        if channels < 1:
            raise ShapeError(f"features need at least one channel, got {channels}")

    def check_inputs(self, image: torch.Tensor, features: torch.Tensor) -> None:
        """Raise ShapeError for inputs this upsampler cannot use, before any work is done."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ShapeError(f"image must be [B, 3, H, W], got {list(image.shape)}")
        if features.ndim != 4:
            raise ShapeError(f"features must be [B, C, h, w], got {list(features.shape)}")
        if image.shape[0] != features.shape[0]:
            raise ShapeError(f"image batch ({image.shape[0]}) differs from features batch ({features.shape[0]})")
        self.check_channels(int(features.shape[1]))

    def peak_bytes(self, channels: int, output_size: tuple[int, int], batch: int = 1) -> int:
        """Estimated peak memory of one float32 forward: here, the output itself."""
        return batch * channels * output_size[0] * output_size[1] * 4

    def forward(self, image: torch.Tensor, features: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError
