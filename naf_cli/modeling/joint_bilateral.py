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


# bytes of one JBF band's window weights (and their temporaries): rows are taken so they fit
JBF_BAND_BYTES = 64 * 2**20


def bilinear_taps(n_out: int, n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where ``F.interpolate(mode="bilinear", align_corners=False)`` reads each output position
    of one axis: the two input cells and their weights, [n_out] each (the same cell twice at the
    far edge). Computed as PyTorch does: source = max(0, (out + 0.5) * n_in / n_out - 0.5)."""
    source = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    first = source.floor().long().clamp(max=n_in - 1)
    second = (first + 1).clamp(max=n_in - 1)
    frac = source - first
    return first, second, 1 - frac, frac


def window_to_cells(n_out: int, n_in: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each output position p of one axis, how its window's bilinear values draw on cells.

    Returns ``(base, spread)``: ``base`` [n_out], the lowest cell p's window reads, and
    ``spread`` [n_out, 2 radius + 1, K] (float64): window position ``p + d`` (``d`` from
    ``-radius``) takes weight ``spread[p, d + radius, k]`` of cell ``base[p] + k``; zero where
    ``p + d`` is outside the axis. K is the most cells any window reads.
    """
    first, second, w_first, w_second = bilinear_taps(n_out, n_in)
    positions = torch.arange(n_out)[:, None] + torch.arange(-radius, radius + 1)[None, :]
    inside = (positions >= 0) & (positions < n_out)
    clamped = positions.clamp(0, n_out - 1)
    base = first[clamped[:, 0]]
    span = int((second[clamped[:, -1]] - base).max()) + 1
    spread = torch.zeros(n_out, 2 * radius + 1, span, dtype=torch.float64)
    for cells, weights in ((first, w_first), (second, w_second)):
        spread.scatter_add_(2, (cells[clamped] - base[:, None])[..., None], (weights[clamped] * inside)[..., None])
    return base, spread


class JointBilateralFilter(JointBilateral):
    """JBF: the bilinearly upsampled features filtered by a joint bilateral filter, its window
    ``(2 radius + 1)^2`` output pixels: pixel p = sum over pixels q of the window of
    B(q) exp(-|p - q|^2 / 2 sigma_spatial^2) exp(-|I(p) - I(q)|^2 / 2 sigma_range^2), normalised
    (B: bilinear upsampling, I: the guidance at the output size; pixels outside are left out).

    Computed exactly without the bilinear map: B(q) mixes the four cells around q, so each
    pixel's window weights fold into weights over the few cells its window reads (separably:
    rows, then columns), and the features are read once per such cell rather than once per
    window pixel (a 33 x 33 window at x16 reads 4 x 4 cells).
    """

    def __init__(self, sigma_spatial: float = 2.0, sigma_range: float = 0.1, radius: int | None = None,
                 band_rows: int | None = None) -> None:
        super().__init__(sigma_spatial, sigma_range, radius, band_rows or BAND_ROWS)
        self.fixed_band_rows = band_rows

    def peak_bytes(self, channels: int, output_size: tuple[int, int], batch: int = 1,
                   guidance_size: tuple[int, int] | None = None) -> int:
        # the output, the guidance at the output size, and one band's window weights
        pixels = batch * output_size[0] * output_size[1]
        return pixels * (channels + 3) * 4 + 3 * JBF_BAND_BYTES

    def _rows_per_band(self, batch: int, width: int) -> int:
        if self.fixed_band_rows is not None:
            return self.fixed_band_rows
        window = (2 * self.radius + 1) ** 2
        return max(1, JBF_BAND_BYTES // (batch * width * window * 4))

    def forward(self, image: torch.Tensor, features: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """image [B, 3, H_img, W_img], features [B, C, h, w] -> [B, C, H, W]."""
        (h, w), (H, W) = features.shape[-2:], (int(output_size[0]), int(output_size[1]))
        batch, r = features.shape[0], self.radius
        device, dtype = features.device, features.dtype
        guide = resize_guidance(image.to(dtype), (H, W))
        padded = F.pad(guide, (r, r, r, r))
        row_base, row_spread = (t.to(device) for t in window_to_cells(H, h, r))
        col_base, col_spread = (t.to(device) for t in window_to_cells(W, w, r))
        row_spread, col_spread = row_spread.to(dtype), col_spread.to(dtype)
        offsets = torch.arange(-r, r + 1, device=device, dtype=dtype)
        spatial = -(offsets[:, None].square() + offsets[None, :].square()) / (2 * self.sigma_spatial ** 2)  # [2r+1, 2r+1]
        window_cols = torch.arange(W, device=device)[:, None] + torch.arange(-r, r + 1, device=device)
        cols_inside = (window_cols >= 0) & (window_cols < W)  # [W, 2r+1]
        # the columns of cell base + m for every output column (beyond the grid: weight 0, clamped)
        cell_cols = [(col_base + m).clamp(max=w - 1) for m in range(col_spread.shape[-1])]
        out = features.new_empty(batch, features.shape[1], H, W)
        for r0, r1 in _bands(H, self._rows_per_band(batch, W)):
            centre = guide[:, :, r0:r1]  # [B, 3, rows, W]
            # window pixels: [B, 3, rows, 2r+1 (dy), W, 2r+1 (dx)] as views of the padded guidance
            around = padded[:, :, r0:r1 + 2 * r].unfold(2, 2 * r + 1, 1).unfold(3, 2 * r + 1, 1)  # [B, 3, rows, W, dy, dx]
            colour = (around - centre[..., None, None]).square().sum(1)  # [B, rows, W, dy, dx]
            logits = colour.mul_(-1 / (2 * self.sigma_range ** 2)).add_(spatial)
            window_rows = torch.arange(r0, r1, device=device)[:, None] + torch.arange(-r, r + 1, device=device)
            rows_inside = (window_rows >= 0) & (window_rows < H)  # [rows, dy]
            inside = rows_inside[:, None, :, None] & cols_inside[None, :, None, :]  # [rows, W, dy, dx]
            logits.masked_fill_(~inside, float("-inf"))
            weights = torch.softmax(logits.flatten(-2), dim=-1).view_as(logits)
            # fold the window into cells: [B, rows, W, Ky, Kx]
            on_cells = torch.einsum("bywij,yik,wjl->bywkl", weights, row_spread[r0:r1], col_spread)
            band = out[:, :, r0:r1]
            band.zero_()
            for k in range(on_cells.shape[-2]):
                picked_rows = features.index_select(2, (row_base[r0:r1] + k).clamp(max=h - 1))  # [B, C, rows, w]
                for m, columns in enumerate(cell_cols):
                    band.add_(picked_rows.index_select(3, columns) * on_cells[:, None, :, :, k, m])
        return out
