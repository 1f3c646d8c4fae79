"""Antialiased bilinear resizing of images, the one route every caller shrinks through."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# PyTorch's CUDA antialias kernel keeps each block's filter taps in 48 KiB of shared memory and
# refuses to shrink by more than about 94x along an axis ("Too much shared memory required");
# past this factor the resize runs on the CPU, which has no such limit (same filter, same result)
CUDA_MAX_SHRINK = 64


def needs_host(shape: torch.Size | tuple[int, ...], size: tuple[int, int], device: torch.device) -> bool:
    """Whether resizing [..., H, W] to ``size`` on ``device`` must run on the CPU."""
    if device.type != "cuda":
        return False
    return any(old > CUDA_MAX_SHRINK * max(new, 1) for old, new in zip(shape[-2:], size, strict=True))


def resize_antialiased(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, *size], bilinear, antialiased when shrinking, ``align_corners=False``."""
    size = (int(size[0]), int(size[1]))
    if needs_host(images.shape, size, images.device):
        host = F.interpolate(images.cpu().float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        return host.to(images.device, images.dtype)
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
