"""Training-free, image-guided baselines: joint bilateral upsampling (JBU) and filtering (JBF).

Both weigh neighbours by a spatial Gaussian times a range Gaussian over guidance colours,
and normalise the weights (a softmax of log-weights, so tiny range sigmas never divide by
zero). Both loop over window offsets and bands of output rows, so memory holds one band's
weights and one gathered band of features at a time, whatever the output size.

Colours are the guidance image (RGB in [0, 1]) resized, antialiased, to the grid in
question: to the output size for output pixels, to the feature grid for low-res cells.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from naf_cli.modeling.upsampler import Upsampler

# output rows per band: with a 5 x 5 window, a 448-wide band of 64 rows holds 25 x 64 x 448 weights
BAND_ROWS = 64


def resize_guidance(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, 3, H_img, W_img] -> [B, 3, H, W], antialiased when shrinking."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def _bands(rows: int, band_rows: int) -> list[tuple[int, int]]:
    return [(r0, min(r0 + band_rows, rows)) for r0 in range(0, rows, band_rows)]


def window_radius(sigma_spatial: float, sigma_range: float, radius: int | None) -> int:
    """The window's radius: given, or 2 spatial sigmas (weights beyond are below exp(-2))."""
    if sigma_spatial <= 0 or sigma_range <= 0 or (radius is not None and radius < 0):
        raise ValueError(f"joint bilateral sigmas must be > 0 and the radius >= 0, got {sigma_spatial}, {sigma_range}, {radius}")
    return radius if radius is not None else math.ceil(2 * sigma_spatial)


def _colour_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared RGB distance, [B, 3, ...] x2 -> [B, 1, ...]."""
    return (a - b).square().sum(1, keepdim=True)


class JointBilateral(Upsampler):
    """What JBU and JBF share: a normalised sum over a window of ``source`` values, weighted by a
    spatial and a range (colour) Gaussian, computed band by band over window offsets."""

    def __init__(self, sigma_spatial: float, sigma_range: float, radius: int | None = None,
                 band_rows: int = BAND_ROWS) -> None:
        super().__init__()
        self.sigma_spatial, self.sigma_range, self.band_rows = sigma_spatial, sigma_range, band_rows
        self.radius = window_radius(sigma_spatial, sigma_range, radius)

    def mix(self, source: torch.Tensor, source_colours: torch.Tensor, colours: torch.Tensor, centres: tuple[torch.Tensor, torch.Tensor],
            cells: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """[B, C, H, W]: output pixel (y, x) mixes the ``source`` [B, C, hs, ws] values q within ``radius``
        of cell ``(cells[0][y], cells[1][x])``, weighted by exp(-|centre - q|^2 / 2 sigma_spatial^2)
        exp(-|colours(y, x) - source_colours(q)|^2 / 2 sigma_range^2); ``centres`` [H], [W] are the output
        pixels' positions in source coordinates, ``colours`` [B, 3, H, W]."""
        (hs, ws), (H, W) = source.shape[-2:], colours.shape[-2:]
        centre_y, centre_x = centres
        offsets = [(dy, dx) for dy in range(-self.radius, self.radius + 1) for dx in range(-self.radius, self.radius + 1)]
        out = source.new_empty(source.shape[0], source.shape[1], H, W)
        for r0, r1 in _bands(H, self.band_rows):
            logits, taps = [], []
            for dy, dx in offsets:
                qy, qx = cells[0][r0:r1] + dy, cells[1] + dx
                valid = ((qy >= 0) & (qy < hs))[:, None] & ((qx >= 0) & (qx < ws))[None, :]
                qy, qx = qy.clamp(0, hs - 1), qx.clamp(0, ws - 1)
                spatial = (centre_y[r0:r1] - qy)[:, None].square() + (centre_x - qx)[None, :].square()
                colour = source_colours.index_select(2, qy).index_select(3, qx)
                logit = -spatial / (2 * self.sigma_spatial ** 2) - _colour_distance(colours[:, :, r0:r1], colour) / (
                    2 * self.sigma_range ** 2)
                logits.append(logit.masked_fill(~valid, float("-inf")))
                taps.append((qy, qx))
            weights = torch.softmax(torch.stack(logits), dim=0)  # [K, B, 1, rows, W]: sums to 1 over the window
            band = out[:, :, r0:r1]
            band.zero_()
            for weight, (qy, qx) in zip(weights, taps, strict=True):
                band.add_(source.index_select(2, qy).index_select(3, qx) * weight)
        return out


class JointBilateralUpsampling(JointBilateral):
    """JBU (Kopf et al. 2007): output pixel p = sum over low-res cells q around p of
    F(q) exp(-|p - q|^2 / 2 sigma_spatial^2) exp(-|I(p) - I(q)|^2 / 2 sigma_range^2), normalised.

    ``|p - q|`` is measured in low-res cells between p's centre mapped onto the feature grid
    and q's centre; q ranges over the ``(2 radius + 1)^2`` cells around the cell holding p
    (cells outside the grid are left out; by default ``radius`` = ceil(2 sigma_spatial)).
    I(p): the guidance at output pixel p; I(q): the guidance averaged over cell q.
    """

    def __init__(self, sigma_spatial: float = 1.0, sigma_range: float = 0.1, radius: int | None = None,
                 band_rows: int = BAND_ROWS) -> None:
        super().__init__(sigma_spatial, sigma_range, radius, band_rows)

    def forward(self, image: torch.Tensor, features: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """image [B, 3, H_img, W_img], features [B, C, h, w] -> [B, C, H, W]."""
        (h, w), (H, W) = features.shape[-2:], (int(output_size[0]), int(output_size[1]))
        # each output pixel's centre on the feature grid (cell centres at integers), and its cell
        ys = (torch.arange(H, device=features.device, dtype=features.dtype) + 0.5) * h / H - 0.5
        xs = (torch.arange(W, device=features.device, dtype=features.dtype) + 0.5) * w / W - 0.5
        cells = ((ys + 0.5).floor().long().clamp(0, h - 1), (xs + 0.5).floor().long().clamp(0, w - 1))
        guide = image.to(features.dtype)
        return self.mix(features, resize_guidance(guide, (h, w)), resize_guidance(guide, (H, W)), (ys, xs), cells)


class JointBilateralFilter(JointBilateral):
    """JBF: the bilinearly upsampled features filtered by a joint bilateral filter, its window
    ``(2 radius + 1)^2`` output pixels: pixel p = sum over pixels q of the window of
    B(q) exp(-|p - q|^2 / 2 sigma_spatial^2) exp(-|I(p) - I(q)|^2 / 2 sigma_range^2), normalised
    (B: bilinear upsampling, I: the guidance at the output size; pixels outside are left out)."""

    def __init__(self, sigma_spatial: float = 2.0, sigma_range: float = 0.1, radius: int | None = None,
                 band_rows: int = BAND_ROWS) -> None:
        super().__init__(sigma_spatial, sigma_range, radius, band_rows)

    def peak_bytes(self, channels: int, output_size: tuple[int, int], batch: int = 1,
                   guidance_size: tuple[int, int] | None = None) -> int:
        # the bilinear map and the output
        return 2 * batch * channels * output_size[0] * output_size[1] * 4

    def forward(self, image: torch.Tensor, features: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """image [B, 3, H_img, W_img], features [B, C, h, w] -> [B, C, H, W]."""
        H, W = int(output_size[0]), int(output_size[1])
        smooth = F.interpolate(features, size=(H, W), mode="bilinear", align_corners=False)
        guide = resize_guidance(image.to(features.dtype), (H, W))
        rows, columns = torch.arange(H, device=features.device), torch.arange(W, device=features.device)
        return self.mix(smooth, guide, guide, (rows.to(features.dtype), columns.to(features.dtype)), (rows, columns))
