"""Training-free, image-guided baselines: joint bilateral upsampling (JBU) and filtering (JBF).

Both weigh neighbours by a spatial Gaussian times a range Gaussian over guidance colours,
and normalise the weights (a softmax of log-weights, so tiny range sigmas never divide by
zero). Both work in bands of output rows, so memory holds one band's weights at a time, whatever
the output size.

Colours are the guidance image (RGB in [0, 1]) resized, antialiased, to the grid in
question: to the output size for output pixels, to the feature grid for low-res cells.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from naf_cli.modeling.upsampler import Upsampler
from naf_cli.resampling import resize_antialiased

# bytes of one band's window weights and their temporaries: output rows are taken so they fit
BAND_BYTES = 64 * 2**20


def resize_guidance(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, 3, H_img, W_img] -> [B, 3, H, W], antialiased when shrinking."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return resize_antialiased(image, size)


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
    """What JBU and JBF share: a normalised sum over a window, weighted by a spatial and a range
    (colour) Gaussian, computed band by band of output rows (``band_rows``, or as many as fit
    ``BAND_BYTES`` of weights when None)."""

    def __init__(self, sigma_spatial: float, sigma_range: float, radius: int | None = None,
                 band_rows: int | None = None) -> None:
        super().__init__()
        self.sigma_spatial, self.sigma_range, self.band_rows = sigma_spatial, sigma_range, band_rows
        self.radius = window_radius(sigma_spatial, sigma_range, radius)

    def peak_bytes(self, channels: int, output_size: tuple[int, int], batch: int = 1,
                   guidance_size: tuple[int, int] | None = None) -> int:
        """The float32 output, the guidance at the output size, and one band's window weights."""
        pixels = batch * output_size[0] * output_size[1]
        return pixels * (channels + 3) * 4 + 3 * BAND_BYTES

    def _rows_per_band(self, row_bytes: int) -> int:
        """``band_rows``, or the rows whose weights (``row_bytes`` each) fit ``BAND_BYTES``."""
        if self.band_rows is not None:
            return self.band_rows
        return max(1, BAND_BYTES // max(1, row_bytes))


def _cell_groups(n_out: int, n_low: int, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Output positions grouped by the cell that holds them (``cells`` [n_out], non-decreasing).

    Returns ``(members, flat_slot, group)``: ``members`` [n_low, group], the positions of each
    cell padded by repeating one (never read back); ``flat_slot`` [n_out], where position p
    sits in ``members.flatten()``.
    """
    counts = torch.bincount(cells, minlength=n_low)
    group = max(1, int(counts.max()))
    starts = torch.cumsum(counts, 0) - counts
    members = (starts[:, None] + torch.arange(group)).clamp(max=n_out - 1)
    flat_slot = cells * group + torch.arange(n_out) - starts[cells]
    return members, flat_slot, group


class JointBilateralUpsampling(JointBilateral):
    """JBU (Kopf et al. 2007): output pixel p = sum over low-res cells q around p of
    F(q) exp(-|p - q|^2 / 2 sigma_spatial^2) exp(-|I(p) - I(q)|^2 / 2 sigma_range^2), normalised.

    ``|p - q|`` is measured in low-res cells between p's centre mapped onto the feature grid
    and q's centre; q ranges over the ``(2 radius + 1)^2`` cells around the cell holding p
    (cells outside the grid are left out; by default ``radius`` = ceil(2 sigma_spatial)).
    I(p): the guidance at output pixel p; I(q): the guidance averaged over cell q.

    Computed cell by cell: every pixel of a cell shares its window, so the window's features
    are gathered once per cell and its pixels' weights applied with one batched matrix product
    (``band_rows`` caps the output rows taken at once).
    """

    def __init__(self, sigma_spatial: float = 1.0, sigma_range: float = 0.1, radius: int | None = None,
                 band_rows: int | None = None) -> None:
        super().__init__(sigma_spatial, sigma_range, radius, band_rows)

    def forward(self, image: torch.Tensor, features: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """image [B, 3, H_img, W_img], features [B, C, h, w] -> [B, C, H, W]."""
        (h, w), (H, W) = features.shape[-2:], (int(output_size[0]), int(output_size[1]))
        batch, channels = features.shape[:2]
        device, dtype, r = features.device, features.dtype, self.radius
        k = 2 * r + 1
        # each output pixel's centre on the feature grid (cell centres at integers), and its cell
        ys = (torch.arange(H, dtype=torch.float64) + 0.5) * h / H - 0.5
        xs = (torch.arange(W, dtype=torch.float64) + 0.5) * w / W - 0.5
        cell_y = (ys + 0.5).floor().long().clamp(0, h - 1)
        cell_x = (xs + 0.5).floor().long().clamp(0, w - 1)
        members, flat_slot, group = _cell_groups(W, w, cell_x)
        offsets = torch.arange(-r, r + 1)
        # columns: each cell column's window, and each grouped pixel's spatial term to it [w, group, k]
        window_x = torch.arange(w)[:, None] + offsets
        x_inside = (window_x >= 0) & (window_x < w)
        spatial_x = (xs[members][:, :, None] - window_x[:, None, :]).square() / (2 * self.sigma_spatial ** 2)
        spatial_x = spatial_x.masked_fill(~x_inside[:, None, :], math.inf).to(device, dtype)
        window_x = window_x.clamp(0, w - 1).flatten().to(device)
        members, flat_slot = members.flatten().to(device), flat_slot.to(device)

        guide = image.to(dtype)
        cell_colours = resize_guidance(guide, (h, w))
        colours = resize_guidance(guide, (H, W)).index_select(3, members)  # [B, 3, H, w * group]
        # each cell column's window of features [B, C, h, w, k (dx)] and of cell colours
        value_cols = features.index_select(3, window_x).view(batch, channels, h, w, k)
        colour_cols = cell_colours.index_select(3, window_x).view(batch, 3, h, w, k)
        out = features.new_empty(batch, channels, H, W)
        row_bytes = batch * W * k * k * dtype.itemsize * 4  # logits and their colour temporaries
        band_rows = self._rows_per_band(row_bytes)
        bounds = torch.searchsorted(cell_y, torch.arange(h + 1)).tolist()  # cell row i holds [bounds[i], bounds[i+1])
        for i in range(h):
            if bounds[i] == bounds[i + 1]:
                continue
            window_y = torch.arange(i - r, i + r + 1)
            y_inside = (window_y >= 0) & (window_y < h)
            window_y = window_y.clamp(0, h - 1).to(device)
            # [B * w, k*k, C] and [B, w, 3, 1, k*k]: the window of every cell of this row
            values = value_cols.index_select(2, window_y).permute(0, 3, 2, 4, 1).reshape(batch * w, k * k, channels)
            window_colours = colour_cols.index_select(2, window_y).permute(0, 3, 1, 2, 4).reshape(batch, w, 3, 1, k * k)
            for r0 in range(bounds[i], bounds[i + 1], band_rows):
                r1 = min(bounds[i + 1], r0 + band_rows)
                m = r1 - r0
                spatial_y = (ys[r0:r1, None] - (i + offsets)[None, :]).square() / (2 * self.sigma_spatial ** 2)
                spatial_y = spatial_y.masked_fill(~y_inside[None, :], math.inf).to(device, dtype)  # [m, k]
                # [B, w, m, group, k (dy), k (dx)]
                logits = -(spatial_y[None, None, :, None, :, None] + spatial_x[None, :, None, :, None, :])
                logits = logits.expand(batch, w, m, group, k, k).reshape(batch, w, m * group, k * k)
                pixel_colours = colours[:, :, r0:r1].reshape(batch, 3, m, w, group).permute(0, 3, 1, 2, 4)
                pixel_colours = pixel_colours.reshape(batch, w, 3, m * group, 1)
                distance = (pixel_colours - window_colours).square_().sum(2)  # [B, w, m * group, k*k]
                logits = logits.add(distance, alpha=-1 / (2 * self.sigma_range ** 2))
                weights = torch.softmax(logits, dim=-1).view(batch * w, m * group, k * k)
                mixed = torch.bmm(weights, values).view(batch, w, m, group, channels)
                mixed = mixed.permute(0, 4, 2, 1, 3).reshape(batch, channels, m, w * group)
                out[:, :, r0:r1] = mixed.index_select(3, flat_slot)
        return out


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
        super().__init__(sigma_spatial, sigma_range, radius, band_rows)

    def forward(self, image: torch.Tensor, features: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """image [B, 3, H_img, W_img], features [B, C, h, w] -> [B, C, H, W]."""
        (h, w), (H, W) = features.shape[-2:], (int(output_size[0]), int(output_size[1]))
        (batch, channels), r = features.shape[:2], self.radius
        k = 2 * r + 1
        device, dtype = features.device, features.dtype
        guide = resize_guidance(image.to(dtype), (H, W))
        padded = F.pad(guide, (r, r, r, r))
        row_base, row_spread = window_to_cells(H, h, r)
        col_base, col_spread = window_to_cells(W, w, r)
        ky, kx = row_spread.shape[-1], col_spread.shape[-1]
        row_spread, col_spread = row_spread.to(device, dtype), col_spread.to(device, dtype)
        offsets = torch.arange(-r, r + 1, device=device, dtype=dtype)
        spatial = -(offsets[:, None].square() + offsets[None, :].square()) / (2 * self.sigma_spatial ** 2)  # [k, k]
        window_cols = torch.arange(W, device=device)[:, None] + torch.arange(-r, r + 1, device=device)
        # the spatial logits of each output column's window, -inf at window columns outside: [W, k, k]
        spatial_cols = spatial.expand(W, k, k).masked_fill(((window_cols < 0) | (window_cols >= W))[:, None, :], float("-inf"))
        # output columns grouped by the first cell column their window reads; each group's kx cells
        members, flat_slot, group = _cell_groups(W, w, col_base)
        group_cols = (torch.arange(w)[:, None] + torch.arange(kx)).clamp(max=w - 1).flatten().to(device)
        members, flat_slot = members.flatten().to(device), flat_slot.to(device)
        out = features.new_empty(batch, channels, H, W)
        # small bands: the window weights of a band stay in cache through their passes
        band_rows = self._rows_per_band(batch * W * k * k * dtype.itemsize * 16)
        for r0, r1 in _bands(H, band_rows):
            rows = r1 - r0
            centre = guide[:, :, r0:r1]  # [B, 3, rows, W]
            # window pixels: [B, 3, rows, W, dy, dx] as views of the padded guidance
            around = padded[:, :, r0:r1 + 2 * r].unfold(2, k, 1).unfold(3, k, 1)
            window_rows = torch.arange(r0, r1, device=device)[:, None] + torch.arange(-r, r + 1, device=device)
            outside_rows = torch.zeros(rows, k, device=device, dtype=dtype).masked_fill_((window_rows < 0) | (window_rows >= H), float("-inf"))
            logits = (spatial_cols + outside_rows[:, None, :, None]).expand(batch, rows, W, k, k).contiguous()
            difference = torch.empty_like(logits)
            for c in range(3):
                torch.sub(around[:, c], centre[:, c, :, :, None, None], out=difference)
                logits.addcmul_(difference, difference, value=-1 / (2 * self.sigma_range ** 2))
            weights = torch.softmax(logits.view(batch, rows, W, k * k), dim=-1).view_as(logits)
            # fold the window onto the cells it reads: [B, rows, W, ky, kx]
            on_cells = torch.einsum("bywij,yik,wjl->bywkl", weights, row_spread[r0:r1], col_spread)
            # rows whose windows start at the same cell row, columns grouped likewise: one
            # matrix product per column group, [rows * group, ky * kx] @ [ky * kx, C]
            bases, counts = torch.unique_consecutive(row_base[r0:r1], return_counts=True)
            y0 = r0
            for base, count in zip(bases.tolist(), counts.tolist(), strict=True):
                m = int(count)
                cell_rows = (torch.arange(ky) + base).clamp(max=h - 1).to(device)
                values = features.index_select(2, cell_rows).index_select(3, group_cols)  # [B, C, ky, w * kx]
                values = values.view(batch, channels, ky, w, kx).permute(0, 3, 2, 4, 1).reshape(batch * w, ky * kx, channels)
                grouped = on_cells[:, y0 - r0:y0 - r0 + m].index_select(2, members)  # [B, m, w * group, ky, kx]
                grouped = grouped.view(batch, m, w, group, ky * kx).permute(0, 2, 1, 3, 4).reshape(batch * w, m * group, ky * kx)
                mixed = torch.bmm(grouped, values).view(batch, w, m, group, channels)
                mixed = mixed.permute(0, 4, 2, 1, 3).reshape(batch, channels, m, w * group)
                out[:, :, y0:y0 + m] = mixed.index_select(3, flat_slot)
                y0 += m
        return out
