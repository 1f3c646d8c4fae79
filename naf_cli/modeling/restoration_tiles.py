"""Restoring an image too large to encode whole: bands of rows, GroupNorm statistics exact.

The encoder is local (each 3 x 3 layer widens the receptive field by one row), but its
GroupNorms normalise with statistics of the whole map, and each norm's statistics depend
on the norms before it. So the statistics are gathered one layer at a time: a pass over
bands of rows computes the map before the first norm and sums it, the next pass recomputes
one layer further with the first norm known, and so on. The last pass makes each band's
queries (with the attention window's halo of rows) and mixes its pixels. Memory is that
of one band, whatever the image size; the cost is about 2.5 times the encoder's (each
layer is recomputed by the passes after it), so this path is for images that do not fit.
Bands equal the whole-image result to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from naf_cli.modeling.attention import cross_scale_neighborhood_attention
from naf_cli.modeling.encoder_bands import branch_layers, group_norm_affine
from naf_cli.modeling.restoration import Denoiser

# working memory of one band (the widest maps with their halo rows)
TILE_BYTES = 512 * 2**20
Layers = Sequence[tuple[nn.Conv2d, nn.GroupNorm | None]]
Affine = tuple[torch.Tensor, torch.Tensor] | None


def whole_image_bytes(denoiser: Denoiser, size: tuple[int, int], batch: int = 1) -> int:
    """Estimated peak of ``Denoiser.forward_bands`` on a whole image, in bytes (float32): per pixel,
    3 maps of the encoder's width (its output, the layer maps it computes, the key map), the image
    and its head copies; plus the attention's chunk. Measured on CPU (2026-12-01): 2.7 maps per
    pixel at 512 x 512 and 1024 x 1024, so this leaves about 10% to spare."""
    dim = denoiser.naf.image_encoder.rope.dim
    pixels = batch * size[0] * size[1]
    return pixels * (3 * dim + 3 * (2 + denoiser.naf.num_heads)) * 4 + denoiser.naf.max_chunk_bytes


def band_rows_for(denoiser: Denoiser, width: int, batch: int = 1, max_bytes: int = TILE_BYTES) -> int:
    """Rows per band so that one band's maps (encoder output, intermediates, halo included) fit ``max_bytes``."""
    dim = denoiser.naf.image_encoder.rope.dim
    per_row = batch * width * 3 * dim * 4
    return max(8, max_bytes // max(per_row, 1) - 2 * halo_rows(denoiser))


def halo_rows(denoiser: Denoiser) -> int:
    """Rows above and below a band that its result depends on: the encoder's and the window's reach."""
    encoder = denoiser.naf.image_encoder
    reach = sum(conv.kernel_size[0] // 2 for conv, _ in branch_layers(encoder.sem_encoder))
    return reach + denoiser.naf.kernel_size // 2


def layer_rows(layers: Layers, affines: Sequence[Affine], image: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """Rows ``[r0, r1)`` of ``layers`` applied to ``image`` [B, 3, H, W] (each norm as its
    affine, each convolution reflect-padded at the image's borders), from the image rows they depend on."""
    height = int(image.shape[-2])
    reach = sum(conv.kernel_size[0] // 2 for conv, _ in layers)
    top, bottom = max(0, r0 - reach), min(height, r1 + reach)
    x = image[:, :, top:bottom]
    for (conv, _), affine in zip(layers, affines, strict=True):
        if affine is not None:
            x = F.silu(torch.addcmul(affine[1], x, affine[0]))
        pad = conv.kernel_size[0] // 2
        if pad:
            # rows inside the image are halo to be consumed; at the image's border, reflect
            x = F.pad(x, (pad, pad, pad if top == 0 else 0, pad if bottom == height else 0), mode="reflect")
            top = top if top == 0 else top + pad
            bottom = bottom if bottom == height else bottom - pad
        x = F.conv2d(x, conv.weight.to(x.dtype), None if conv.bias is None else conv.bias.to(x.dtype))
    return x[:, :, r0 - top:r1 - top]


def _plan(height: int, band_rows: int) -> list[tuple[int, int]]:
    return [(r0, min(height, r0 + band_rows)) for r0 in range(0, height, band_rows)]


def branch_affines(layers: Layers, image: torch.Tensor, band_rows: int) -> list[Affine]:
    """Each layer's GroupNorm as an affine with whole-image statistics (None for the stem)."""
    batch, _, height, width = image.shape
    affines: list[Affine] = [None]
    for depth in range(1, len(layers)):
        norm = layers[depth][1]
        assert norm is not None
        sums = torch.zeros(batch, layers[depth - 1][0].out_channels, dtype=torch.float64, device=image.device)
        squares = torch.zeros_like(sums)
        for r0, r1 in _plan(height, band_rows):
            rows = layer_rows(layers[:depth], affines, image, r0, r1)
            sums += rows.sum((2, 3), dtype=torch.float64)
            squares += (rows.double() ** 2).sum((2, 3))
        affines.append(group_norm_affine(sums, squares, height * width, norm, image.dtype))
    return affines


@torch.no_grad()
def denoise_in_tiles(
    denoiser: Denoiser, noisy: torch.Tensor, band_rows: int | None = None, max_bytes: int = TILE_BYTES,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The restored image in bands ``(r0, r1, [B, 3, r1 - r0, W])``, with memory bounded by the band.

    Args:
        noisy: [B, 3, H, W], RGB in [0, 1].
        band_rows: output rows per band (default: as many as fit ``max_bytes``, at most ``TILE_BYTES``).
    """
    denoiser.check(noisy)
    naf = denoiser.naf
    encoder = naf.image_encoder
    batch, _, height, width = noisy.shape
    if min(height, width) < encoder.min_side + 1:
        yield from denoiser.forward_bands(noisy)  # a 1- or 2-pixel side: tiny, and the encoder grows it
        return
    rows_per_band = band_rows or band_rows_for(denoiser, width, batch, min(max_bytes, TILE_BYTES))
    image = naf._normalise(noisy)
    branches = [branch_layers(encoder.encoder), branch_layers(encoder.sem_encoder)]
    affines = [branch_affines(layers, image, rows_per_band) for layers in branches]
    reach, k = naf.kernel_size // 2, naf.kernel_size
    for r0, r1 in _plan(height, rows_per_band):
        # the band and the rows its windows reach; at least k rows, so a window is never cut
        top, bottom = max(0, r0 - reach), min(height, r1 + reach)
        if bottom - top < min(k, height):
            top, bottom = (0, min(height, k)) if top == 0 else (max(0, height - k), height)
        encoded = torch.cat([layer_rows(layers, a, image, top, bottom) for layers, a in zip(branches, affines, strict=True)], 1)
        queries = encoder.rope.rotate_rows(encoded, top, height)
        mixed = cross_scale_neighborhood_attention(
            queries, queries, denoiser.values(noisy[:, :, top:bottom]), naf.num_heads, k, naf.max_chunk_bytes,
            naf.attention_backend,
        )
        yield r0, r1, denoiser.merge_heads(mixed[:, :, r0 - top:r1 - top])
