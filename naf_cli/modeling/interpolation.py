"""Training-free upsampling by interpolation; the image is ignored."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from naf_cli.modeling.upsampler import Upsampler

MODES = ("nearest", "bilinear", "bicubic")


class Interpolation(Upsampler):
    """``F.interpolate`` with ``mode`` (nearest, bilinear or bicubic), ``align_corners=False``."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def forward(self, image: torch.Tensor, features: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """features [B, C, h, w] -> [B, C, H, W]."""
        align = None if self.mode == "nearest" else False
        size = (int(output_size[0]), int(output_size[1]))
        return F.interpolate(features, size=size, mode=self.mode, align_corners=align)
