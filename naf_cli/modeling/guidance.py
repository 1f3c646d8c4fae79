"""The image encoder that turns the guidance image into queries at the output resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from naf_cli.modeling.rope import RoPE2d


class ConvBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> GroupNorm -> SiLU -> conv, with no residual connection."""

    def __init__(self, channels: int, kernel_size: int, groups: int = 8) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad, padding_mode="reflect")
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        x = self.conv1(F.silu(self.norm1(x)))
        return self.conv2(F.silu(self.norm2(x)))


def conv_branch(in_channels: int, channels: int, kernel_size: int, num_blocks: int) -> nn.Sequential:
    """A stem convolution followed by ``num_blocks`` blocks, all with the same kernel."""
    stem = nn.Conv2d(in_channels, channels, kernel_size, padding=kernel_size // 2, padding_mode="reflect")
    return nn.Sequential(stem, *(ConvBlock(channels, kernel_size) for _ in range(num_blocks)))


def guidance_size(image_hw: tuple[int, int], output_hw: tuple[int, int]) -> tuple[int, int] | None:
    """Size the guidance image is reduced to before encoding, or None to keep it.

    An image more than 4x the output on either axis is resized to
    ``(min(H_img, 4H, 4W), min(W_img, 4W, 4H))``.
    """
    (hi, wi), (ho, wo) = image_hw, output_hw
    if hi > 4 * ho or wi > 4 * wo:
        return min(hi, 4 * ho, 4 * wo), min(wi, 4 * wo, 4 * ho)
    return None


class ImageEncoder(nn.Module):
    """Pixel branch (1x1 convs) and context branch (3x3 convs), pooled to the output size, then RoPE."""

    def __init__(self, dim: int = 256, num_blocks: int = 2, context_kernel: int = 3, num_heads: int = 4) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"encoder dim must be even, got {dim}")
        half = dim // 2
        self.encoder = conv_branch(3, half, 1, num_blocks)
        self.sem_encoder = conv_branch(3, half, context_kernel, num_blocks)
        self.rope = RoPE2d(dim, num_heads)
        # reflect padding needs each side longer than the padding
        self.min_side = context_kernel // 2 + 1

    def prepare(self, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """The guidance image actually encoded: reduced by the 4x rule, 1-pixel sides grown."""
        target = guidance_size((int(image.shape[-2]), int(image.shape[-1])), output_size)
        if target is not None:
            image = F.interpolate(image, size=target, mode="bilinear", align_corners=False)
        if min(image.shape[-2:]) < self.min_side:
            # a 1-pixel side (a 1x1 or 1x500 photo): repeat its pixels up to the minimum
            grown = tuple(max(side, self.min_side) for side in image.shape[-2:])
            image = F.interpolate(image, size=grown, mode="nearest")
        return image

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Prepared image [B, 3, Hg, Wg] -> both branches concatenated [B, dim, Hg, Wg]."""
        return torch.cat((self.encoder(image), self.sem_encoder(image)), dim=1)

    def forward(self, image: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """image: [B, 3, H_img, W_img], normalised, any size down to 1 x 1 -> queries [B, dim, H, W]."""
        features = self.encode(self.prepare(image, output_size))
        features = F.adaptive_avg_pool2d(features, output_size)
        return self.rope(features)
