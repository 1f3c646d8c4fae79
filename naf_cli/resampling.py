"""Antialiased bilinear resizing of images, the one route every caller shrinks through."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# PyTorch's CUDA antialias kernel keeps each block's filter weights in 48 KiB of shared memory:
# (32 iw + 33 ih) x the element size, with 2 x shrink + 1 taps per axis, so float32 fails past
# about 94x on both axes (about 185x on one) with "Too much shared memory required". Up to this
# float32 shrink (scaled by the element size) the kernel is safe; past it the resize runs on the
# CPU, which has no such limit (same filter; equal to the CUDA kernel to float rounding).
CUDA_MAX_SHRINK = 64


def needs_host(shape: torch.Size | tuple[int, ...], size: tuple[int, int], device: torch.device, element_size: int = 4) -> bool:
    """Whether resizing [..., H, W] of ``element_size``-byte numbers to ``size`` on ``device`` must run on the CPU."""
    if device.type != "cuda":
        return False
    limit = CUDA_MAX_SHRINK * 4 / element_size
    return any(old > limit * max(new, 1) for old, new in zip(shape[-2:], size, strict=True))


def resize_antialiased(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, *size], bilinear, antialiased when shrinking, ``align_corners=False``."""
    size = (int(size[0]), int(size[1]))
    if needs_host(images.shape, size, images.device, images.element_size()):
        host = images.cpu()
        if host.dtype in (torch.float16, torch.bfloat16):
            host = host.float()  # the CPU kernel's precision for half types
        shrunk = F.interpolate(host, size=size, mode="bilinear", align_corners=False, antialias=True)
        return shrunk.to(images.device, images.dtype)
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
