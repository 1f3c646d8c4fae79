"""Per-image reconstruction metrics, over the whole map and over the edge band."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# a guidance pixel is an edge where the Sobel gradient of its grey level (kernels / 8, grey
# in [0, 1]) exceeds this: a step of about 0.2 (50 of 255 grey levels)
EDGE_THRESHOLD = 0.1
# output pixels within this many output pixels of one whose area holds an edge pixel form the
# edge band (0: those pixels alone; about a third of the pixels of the validation photos)
EDGE_RADIUS = 0


def edge_band(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Boolean [h, w] mask of the cells of ``grid`` near a strong edge of ``image`` [3, H, W].

    Sobel on the grey image (Rec. 601 weights, replicate padding); a cell holds an edge when
    any of its pixels does (image sides multiples of the grid); then dilated by ``EDGE_RADIUS``.
    """
    grey = (image[0] * 0.299 + image[1] * 0.587 + image[2] * 0.114)[None, None]
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=grey.dtype) / 8
    kernels = torch.stack((sobel_x, sobel_x.T))[:, None].to(grey.device)
    gradient = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
    edges = (gradient.square().sum(1, keepdim=True).sqrt() > EDGE_THRESHOLD).float()
    cells = F.adaptive_max_pool2d(edges, grid)
    size = 2 * EDGE_RADIUS + 1
    return F.max_pool2d(cells, size, stride=1, padding=EDGE_RADIUS)[0, 0] > 0


def seam_contrast(features: torch.Tensor, factor: int) -> float:
    """How much more ``features`` [C, H, W] change between neighbouring pixels *across* the
    boundaries of ``factor`` x ``factor`` cells than *inside* them: the mean over channels of
    |difference| of pairs that straddle a boundary (pixel ``k * factor - 1`` and the next, in
    rows and in columns) over the same mean for pairs inside one cell. NaN without both kinds."""
    features = features.double()
    across_columns = (torch.arange(1, features.shape[-1]) % factor) == 0  # pair (x - 1, x) for x = 1..W-1
    across_rows = (torch.arange(1, features.shape[-2]) % factor) == 0
    columns = (features[:, :, 1:] - features[:, :, :-1]).abs().mean(0)  # [H, W - 1]
    rows = (features[:, 1:, :] - features[:, :-1, :]).abs().mean(0)  # [H - 1, W]
    across = torch.cat((columns[:, across_columns].flatten(), rows[across_rows].flatten()))
    inside = torch.cat((columns[:, ~across_columns].flatten(), rows[~across_rows].flatten()))
    if not len(across) or not len(inside):
        return float("nan")
    if float(inside.mean()) == 0.0:  # constant inside every cell (nearest): all change is at the seams
        return float("inf") if float(across.mean()) > 0 else float("nan")
    return float(across.mean() / inside.mean())


def reconstruction_metrics(prediction: torch.Tensor, target: torch.Tensor, band: torch.Tensor,
                           factor: int | None = None) -> dict[str, float]:
    """MSE (mean over C, H, W) and mean cosine similarity of pixel vectors, over all pixels and
    over the ``band`` pixels; prediction and target [C, H, W]. Edge values are NaN when the band is empty.

    ``seam``: the prediction's ``seam_contrast`` at the low-resolution cells (``factor`` pixels)
    over the target's at the same positions: 1.0 when the output steps at cell boundaries no
    more than the real features do, above 1 for a visible grid (NaN without ``factor``).
    ``variance``: the prediction's variance over pixels, channel by channel, averaged, over the
    target's: below 1 when the output is smoothed toward the local mean (shrunk).
    """
    prediction, target = prediction.double(), target.double()
    squared = (prediction - target).square().mean(0)
    cosine = F.cosine_similarity(prediction, target, dim=0, eps=1e-12)
    empty = not bool(band.any())
    return {
        "mse": float(squared.mean()), "cosine": float(cosine.mean()),
        "edge_mse": float("nan") if empty else float(squared[band].mean()),
        "edge_cosine": float("nan") if empty else float(cosine[band].mean()),
        "edge_fraction": float(band.double().mean()),
        "seam": float("nan") if not factor else seam_contrast(prediction, factor) / seam_contrast(target, factor),
        "variance": float(prediction.flatten(1).var(1).mean() / target.flatten(1).var(1).mean().clamp(min=1e-300)),
    }
