"""Axial 2-D rotary position embedding with no learned weights."""

from __future__ import annotations

import math

import torch
from torch import nn

from naf_cli.modeling.fused_kernels import EAGER_KERNELS, FusedKernels


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def grid_coordinates(height: int, width: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell-centre coordinates of an H x W grid in [-1, 1], each axis on its own: ([H], [W])."""
    y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    return 2 * y - 1, 2 * x - 1


class RoPE2d(nn.Module):
    """Rotate each head of a [B, heads * head_dim, H, W] map by its grid position.

    ``head_dim / 4`` periods ``base ** (2 i / (head_dim / 2))``; per position the angles
    ``2 pi y / periods`` then ``2 pi x / periods``, tiled twice to ``head_dim``. In training
    mode both coordinates are scaled by one factor drawn log-uniformly in
    ``[1 / max_rescale, max_rescale]`` per call.
    """

    periods: torch.Tensor

    def __init__(self, dim: int = 256, num_heads: int = 4, base: float = 100.0, max_rescale: float = 2.0) -> None:
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 4:
            raise ValueError(f"RoPE needs dim ({dim}) split into {num_heads} heads of a multiple of 4 channels")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.max_rescale = max_rescale
        n_periods = self.head_dim // 4
        exponents = 2 * torch.arange(n_periods, dtype=torch.float32) / (self.head_dim // 2)
        self.register_buffer("periods", base**exponents, persistent=True)

    def half_angles(self, height: int, width: int, scale: float = 1.0) -> torch.Tensor:
        """Angles [H, W, head_dim / 2] of an H x W grid: the y angles then the x angles.
        ``angles`` repeats them twice."""
        y, x = grid_coordinates(height, width, self.periods.device)
        y, x = y * scale, x * scale
        periods = self.periods.float()
        ay = 2 * math.pi * y[:, None] / periods  # [H, P]
        ax = 2 * math.pi * x[:, None] / periods  # [W, P]
        return torch.cat((ay[:, None, :].expand(height, width, -1), ax[None, :, :].expand(height, width, -1)), dim=-1)

    def angles(self, height: int, width: int, scale: float = 1.0) -> torch.Tensor:
        """Angles [H, W, head_dim] for an H x W grid."""
        half = self.half_angles(height, width, scale)
        return torch.cat((half, half), dim=-1)

    def rows_cos_sin(self, height: int, width: int, row0: int, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [r, W, head_dim / 2] of ``half_angles`` for rows ``[row0, row0 + r)``,
        computed on the per-row and per-column angles and then broadcast."""
        y, x = grid_coordinates(height, width, self.periods.device)
        periods = self.periods.float()
        ay = 2 * math.pi * y[row0:row0 + n_rows, None] / periods  # [r, P]
        ax = 2 * math.pi * x[:, None] / periods  # [W, P]
        size = (n_rows, width, periods.shape[0])
        cos = torch.cat((ay.cos()[:, None].expand(size), ax.cos()[None].expand(size)), dim=-1)
        sin = torch.cat((ay.sin()[:, None].expand(size), ax.sin()[None].expand(size)), dim=-1)
        return cos, sin

    def rotate_rows(self, x: torch.Tensor, row0: int, height: int, kernels: FusedKernels = EAGER_KERNELS) -> torch.Tensor:
        """Inference RoPE of rows ``[row0, row0 + r)`` of an ``height``-row grid.

        x: [B, dim, r, W] -> [B, dim, r, W] in channels_last. Equal to ``forward`` on the
        whole map, cut to those rows; the rotation ``[x1, x2] -> [x1 c - x2 s, x2 c + x1 s]``
        is done on the halves in place of ``rotate_half`` (same values, fewer passes), by
        ``kernels`` (``fused_kernels``).
        """
        _, dim, n_rows, width = x.shape
        if dim != self.dim:
            raise ValueError(f"RoPE2d expects {self.dim} channels, got {dim}")
        cos, sin = (t.to(x.dtype)[:, :, None] for t in self.rows_cos_sin(height, width, row0, n_rows))
        return kernels.rotate_pairs(x, cos, sin, self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, dim, H, W] -> [B, dim, H, W]."""
        batch, dim, height, width = x.shape
        if dim != self.dim:
            raise ValueError(f"RoPE2d expects {self.dim} channels, got {dim}")
        scale = 1.0
        if self.training and self.max_rescale != 1.0:
            log_max = math.log(self.max_rescale)
            scale = math.exp((torch.rand(()).item() * 2 - 1) * log_max)
        theta = self.angles(height, width, scale)  # [H, W, head_dim]
        cos, sin = theta.cos().to(x.dtype), theta.sin().to(x.dtype)
        heads = x.reshape(batch, self.num_heads, self.head_dim, height, width).permute(0, 1, 3, 4, 2)
        rotated = heads * cos + rotate_half(heads) * sin
        return rotated.permute(0, 1, 4, 2, 3).reshape(batch, dim, height, width)
