"""The reconstruction pair: a backbone's features of an image (the target) and of the same
image downscaled by a factor (the input). The one implementation used by training, ``naf
eval``, the tests and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch

from naf_cli.backbones import Backbone
from naf_cli.resampling import resize_antialiased

# feature cells on the input's short side, per factor: targets are then never upscaled
# photos (a photo smaller than the target is left out at that factor) and inputs keep 7+ cells
BASE_CELLS = {2: 9, 4: 7, 8: 7}
# the long side is cropped to at most this many times the short side (panoramas stay cheap)
MAX_ASPECT = 2.0


def needed_short_side(factor: int, patch_size: int) -> int:
    """The short side, in pixels, a photo needs to be scored at ``factor`` (its target is never enlarged)."""
    return BASE_CELLS[factor] * factor * patch_size


def short_sides(paths: list[Path]) -> list[float]:
    """Each photo's short side from its header (inf when unreadable: the evaluation says why)."""
    from PIL import Image

    sides = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sides.append(float(min(image.size)))
        except (OSError, ValueError, Image.DecompressionBombError):
            sides.append(float("inf"))
    return sides


def downscale(images: torch.Tensor, factor: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 3, H / factor, W / factor], antialiased bilinear (sides divisible by ``factor``)."""
    size = (images.shape[-2] // factor, images.shape[-1] // factor)
    return resize_antialiased(images, size)


@torch.no_grad()
def feature_pair(backbone: Backbone, images: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input: features of the images downscaled by ``factor``, target: features of the images).

    ``images`` [B, 3, H, W] in [0, 1], H and W multiples of ``factor`` x the patch size;
    returns [B, C, H / (factor p), W / (factor p)] and [B, C, H / p, W / p].
    """
    return backbone(downscale(images, factor)), backbone(images)


def target_image(photo: torch.Tensor, factor: int, patch_size: int, base_cells: int | None = None) -> torch.Tensor | None:
    """The evaluation image of ``photo`` [3, H, W] at ``factor``, or None when the photo is too small.

    Its short side is ``base_cells x patch x factor`` pixels (the photo downscaled, never
    enlarged); its long side keeps the aspect ratio, centre-cropped down to a multiple of
    ``patch x factor`` and to at most ``MAX_ASPECT`` times the short side.
    """
    unit = patch_size * factor
    short = base_cells * unit if base_cells is not None else needed_short_side(factor, patch_size)
    h, w = photo.shape[-2:]
    if min(h, w) < short:
        return None
    scale = short / min(h, w)
    size = (short, max(short, round(w * scale))) if h <= w else (max(short, round(h * scale)), short)
    image = resize_antialiased(photo[None], size)[0]
    long_axis = 2 if size[1] >= size[0] else 1
    length = min(image.shape[long_axis] // unit * unit, int(MAX_ASPECT * short) // unit * unit)
    start = (image.shape[long_axis] - length) // 2
    return image.narrow(long_axis, start, length).clamp(0, 1)
