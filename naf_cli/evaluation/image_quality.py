"""Image-restoration metrics: PSNR and SSIM on RGB in [0, 1], and the training loss built on them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def psnr(restored: torch.Tensor, clean: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of [3, H, W] images in [0, 1] (restored clipped to [0, 1])."""
    mse = float((restored.double().clamp(0, 1) - clean.double()).square().mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def _window(channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-x * x / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).to(device, dtype).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004: 11 x 11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, range 1)
    of [B, C, H, W] images, per channel and valid position: [B, C, H - 10, W - 10]."""
    channels = x.shape[1]
    window = _window(channels, x.device, x.dtype)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2))


def ssim(restored: torch.Tensor, clean: torch.Tensor) -> float:
    """Mean SSIM of [3, H, W] images in [0, 1] (restored clipped), in [-1, 1]."""
    return float(ssim_map(restored.double().clamp(0, 1)[None], clean.double()[None]).mean())


def restoration_loss(restored: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """The paper's loss: 1.0 * L1 + 5.0 * L2 + 0.2 * (1 - SSIM), on [B, 3, H, W]."""
    l1 = (restored - clean).abs().mean()
    l2 = (restored - clean).square().mean()
    return l1 + 5.0 * l2 + 0.2 * (1 - ssim_map(restored, clean).mean())
