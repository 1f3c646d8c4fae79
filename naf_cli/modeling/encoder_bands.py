"""Inference path of the image encoder: each layer in horizontal bands, GroupNorm exact.

Layer by layer, the guidance image is processed in bands of rows small enough to stay in
the CPU cache: GroupNorm's affine and SiLU are applied to a band (with the convolution's
halo rows), the band is convolved, and the sums that give the *next* GroupNorm its
statistics are accumulated from the result while it is still in cache. Statistics are
therefore those of the whole guidance image, and the result equals ``ImageEncoder.encode``
to float rounding, with fewer passes over memory. Forward only (no autograd).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from naf_cli.modeling.encoder_convolution import DIRECT, convolve, layer_route, memory_format
from naf_cli.modeling.fused_kernels import EAGER_KERNELS, FusedKernels
from naf_cli.modeling.guidance import ConvBlock, ImageEncoder

CPU_BAND_ROWS = 32


@dataclass
class BandedMap:
    """A [B, C, H, W] map held as bands of ``band_rows`` rows (in the layout of the route that
    made them: channels_last, or NCHW after Winograd), with the
    per-channel sums and sums of squares that GroupNorm needs (float64, [B, C])."""

    bands: list[torch.Tensor]
    band_rows: int
    height: int
    sums: torch.Tensor
    squares: torch.Tensor

    def row(self, index: int) -> torch.Tensor:
        """Row ``index`` (reflected at the borders, as reflect padding does): [B, C, 1, W]."""
        if index < 0:
            index = -index
        elif index >= self.height:
            index = 2 * (self.height - 1) - index
        band = self.bands[index // self.band_rows]
        local = index % self.band_rows
        return band[:, :, local:local + 1]


def group_norm_affine(
    sums: torch.Tensor, squares: torch.Tensor, pixels: int, norm: nn.GroupNorm, dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm as a per-channel affine ``x * scale + shift`` ([B, C, 1, 1] each) from the
    per-channel sums and sums of squares ([B, C], float64) over ``pixels`` positions."""
    batch, channels = sums.shape
    groups = norm.num_groups
    count = pixels * (channels // groups)
    mean = sums.view(batch, groups, -1).sum(-1) / count
    var = (squares.view(batch, groups, -1).sum(-1) / count - mean * mean).clamp(min=0)
    rstd = (var + norm.eps).rsqrt().repeat_interleave(channels // groups, dim=1)
    weight = norm.weight.double() if norm.weight is not None else torch.ones_like(rstd)
    bias = norm.bias.double() if norm.bias is not None else torch.zeros_like(rstd)
    scale = rstd * weight
    shift = bias - mean.repeat_interleave(channels // groups, dim=1) * scale
    return scale.to(dtype)[:, :, None, None], shift.to(dtype)[:, :, None, None]


def _group_norm_affine(stats: BandedMap, width: int, norm: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm's affine from the sums a banded map carries."""
    return group_norm_affine(stats.sums, stats.squares, stats.height * width, norm, stats.bands[0].dtype)


def _conv_layer(
    source: BandedMap, conv: nn.Conv2d, norm: nn.GroupNorm | None, out: torch.Tensor | None = None,
    between_bands: Callable[[], object] | None = None, route: str = DIRECT,
    layout: torch.memory_format = torch.channels_last, kernels: FusedKernels = EAGER_KERNELS,
) -> BandedMap:
    """``conv(silu(norm(source)))`` (or ``conv(source)`` without a norm), band by band, by
    the convolution ``route`` (``encoder_convolution``), its input laid out as ``layout``.

    With ``out`` given, each band is written into it (rows of a [B, C', H, W] view) and no
    statistics are kept: the last layer of a branch. ``between_bands`` is called before each band;
    ``kernels`` sum each band for the next norm, or copy it into ``out``.
    """
    batch, channels, _, width = source.bands[0].shape
    pad = conv.kernel_size[0] // 2
    affine = _group_norm_affine(source, width, norm) if norm is not None else None
    weight = conv.weight.to(source.bands[0].dtype)
    bias = conv.bias.to(source.bands[0].dtype) if conv.bias is not None else None
    bands: list[torch.Tensor] = []
    sums = torch.zeros(batch, conv.out_channels, dtype=torch.float64, device=weight.device)
    squares = torch.zeros_like(sums)
    for index, band in enumerate(source.bands):
        if between_bands is not None:
            between_bands()
        r0 = index * source.band_rows
        rows = band.shape[2]
        buffer = torch.empty(
            batch, channels, rows + 2 * pad, width + 2 * pad, dtype=band.dtype, device=band.device,
            memory_format=layout,
        )
        pieces = [(pad, band)] + [
            (pad + offset, source.row(r0 + offset))
            for offset in [*range(-pad, 0), *range(rows, rows + pad)]
        ]
        for at, piece in pieces:
            target = buffer[:, :, at:at + piece.shape[2], pad:pad + width]
            if affine is None:
                target.copy_(piece)
            else:
                torch.addcmul(affine[1], piece, affine[0], out=target)
        if affine is not None:
            F.silu(buffer, inplace=True)
        if pad:
            # reflect padding of the columns, from the columns just inside
            for c in range(pad):
                buffer[:, :, :, pad - 1 - c].copy_(buffer[:, :, :, pad + 1 + c])
                buffer[:, :, :, pad + width + c].copy_(buffer[:, :, :, pad + width - 2 - c])
        result = convolve(buffer, weight, bias, route)
        if out is not None:
            kernels.relayout(out[:, :, r0:r0 + rows], result)
            continue
        band_sums, band_squares = kernels.channel_sums(result)
        sums += band_sums
        squares += band_squares
        bands.append(result)
    return BandedMap(bands, source.band_rows, source.height, sums, squares)


def _split(image: torch.Tensor, band_rows: int) -> BandedMap:
    """The prepared image as bands (no statistics: the stem has no norm before it)."""
    batch, channels, height, _ = image.shape
    image = image.contiguous(memory_format=torch.channels_last)
    bands = [image[:, :, r:r + band_rows] for r in range(0, height, band_rows)]
    empty = torch.zeros(batch, channels, dtype=torch.float64, device=image.device)
    return BandedMap(bands, band_rows, height, empty, empty)


def branch_layers(branch: nn.Sequential) -> list[tuple[nn.Conv2d, nn.GroupNorm | None]]:
    """A branch as (conv, the norm before it): the stem has none, each block gives two."""
    stem = branch[0]
    assert isinstance(stem, nn.Conv2d)
    layers: list[tuple[nn.Conv2d, nn.GroupNorm | None]] = [(stem, None)]
    for block in list(branch)[1:]:
        assert isinstance(block, ConvBlock)
        layers += [(block.conv1, block.norm1), (block.conv2, block.norm2)]
    return layers


def encode_in_bands(
    encoder: ImageEncoder, image: torch.Tensor, band_rows: int = CPU_BAND_ROWS,
    between_bands: Callable[[], object] | None = None, convolution: str = DIRECT, kernels: FusedKernels = EAGER_KERNELS,
) -> torch.Tensor:
    """``encoder.encode(image)`` computed band by band.

    Args:
        image: [B, 3, Hg, Wg], prepared (``encoder.prepare``) and normalised.
        band_rows: rows per band; the whole height in one band is the plain layer-by-layer path.
        between_bands: called before each band of each layer (NAF refits its CPU threads there).
        convolution: the route of the layers it suits (``encoder_convolution.resolve_convolution``).
        kernels: the fused steps (``fused_kernels``): each band's sums for the next norm, the copy into the output.

    Returns:
        [B, dim, Hg, Wg] in channels_last memory format.
    """
    batch, _, height, width = image.shape
    band_rows = max(1, min(band_rows, height))
    source = _split(image, band_rows)
    branches = [branch_layers(encoder.encoder), branch_layers(encoder.sem_encoder)]
    total = sum(layers[-1][0].out_channels for layers in branches)
    out = torch.empty(batch, total, height, width, dtype=image.dtype, device=image.device, memory_format=torch.channels_last)
    first = 0
    for layers in branches:
        current = source
        channels = layers[-1][0].out_channels
        # one layout through the branch, the one its main layers read fastest: no conversions between layers
        layout = memory_format(layer_route(layers[-1][0], convolution))
        for index, (conv, norm) in enumerate(layers):
            last = index == len(layers) - 1
            target = out[:, first:first + channels] if last else None
            current = _conv_layer(
                current, conv, norm, target, between_bands, layer_route(conv, convolution), layout, kernels,
            )
        first += channels
    return out
