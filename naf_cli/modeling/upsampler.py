"""The contract every upsampler follows, so callers never ask which kind they hold."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from naf_cli.errors import ShapeError


class Upsampler(nn.Module):
    """``forward(image, features, output_size)``: features [B, C, h, w] -> [B, C, H, W].

    ``image`` is [B, 3, H_img, W_img], RGB in [0, 1], of any size; upsamplers that ignore
    it accept it all the same. Subclasses override ``check_channels`` when they cannot take
    every channel count, ``peak_bytes`` when one forward needs more than its output, and
    ``forward_bands`` / ``banded_peak_bytes`` when they can make the output a band at a time.
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

    def peak_bytes(
        self, channels: int, output_size: tuple[int, int], batch: int = 1, guidance_size: tuple[int, int] | None = None,
    ) -> int:
        """Estimated peak memory of one float32 forward (``guidance_size``: the image it is
        given, where that matters): here, the output itself."""
        return batch * channels * output_size[0] * output_size[1] * 4

    def banded_peak_bytes(
        self, channels: int, output_size: tuple[int, int], batch: int = 1, guidance_size: tuple[int, int] | None = None,
    ) -> int:
        """Estimated peak of ``forward_bands`` with each band let go after use (here: ``peak_bytes``)."""
        return self.peak_bytes(channels, output_size, batch, guidance_size)

    def forward_bands(
        self, image: torch.Tensor, features: torch.Tensor, output_size: tuple[int, int],
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """The output as bands of rows ``(r0, r1, [B, C, r1 - r0, W])``; here one band, the whole output."""
        with torch.no_grad():
            out = self(image, features, output_size)
        yield 0, int(out.shape[-2]), out

    def forward(self, image: torch.Tensor, features: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError
