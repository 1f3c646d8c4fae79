"""Rows of NAF's query map, computed on demand from the encoded guidance image.

The query map is the encoder's output adaptive-average-pooled to the output size, then
rotated by RoPE. Pooling is separable: an output row averages the encoded rows of its bin,
``[floor(r * n / N), ceil((r + 1) * n / N))``, the same bins ``F.adaptive_avg_pool2d``
uses, so any band of rows is computed without the rest of the map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from naf_cli.modeling.fused_kernels import EAGER_KERNELS, FusedKernels
from naf_cli.modeling.index_cache import index_cache
from naf_cli.modeling.rope import RoPE2d


@index_cache(64)
def pooling_bins(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, length) of each output position's bin on the input axis: LongTensors [n_out]."""
    r = torch.arange(n_out, dtype=torch.long)
    start = r * n_in // n_out
    end = ((r + 1) * n_in + n_out - 1) // n_out
    return start, end - start


def pool_axis(x: torch.Tensor, dim: int, start: int, stop: int, n_out: int) -> torch.Tensor:
    """Positions ``[start, stop)`` of ``x`` adaptive-average-pooled along ``dim`` to ``n_out``.

    A weighted sum of at most ``max bin length`` gathered slices: cheap when enlarging (bins
    of one or two) and for mild reductions; ``column_means`` handles whole-ratio reductions.
    """
    n_in = x.shape[dim]
    if n_in == n_out:
        return x.narrow(dim, start, stop - start)
    if x.ndim == 4 and dim in (2, 3) and x.is_contiguous(memory_format=torch.channels_last):
        # gather whole channel vectors (contiguous in this layout), not single values
        return pool_axis(x.permute(0, 2, 3, 1), dim - 1, start, stop, n_out).permute(0, 3, 1, 2)
    first, length = (t[start:stop] for t in pooling_bins(n_in, n_out))
    longest = int(length.max())  # read on the CPU: no wait for the GPU
    first, length = first.to(x.device), length.to(x.device)
    shape = [1] * x.ndim
    shape[dim] = stop - start
    pooled = None
    for step in range(longest):
        index = torch.minimum(first + step, first + length - 1)
        weight = ((step < length).to(x.dtype) / length.to(x.dtype)).view(shape)
        term = x.index_select(dim, index) * weight
        pooled = term if pooled is None else pooled.add_(term)
    assert pooled is not None
    return pooled


def pool_rows(x: torch.Tensor, row0: int, row1: int, n_out: int) -> torch.Tensor:
    """Rows ``[row0, row1)`` of ``x`` [B, C, n_in, W] adaptive-average-pooled to ``n_out`` rows."""
    return pool_axis(x, 2, row0, row1, n_out)


def pool_columns(x: torch.Tensor, n_out: int) -> torch.Tensor:
    """``x`` [B, C, r, W] adaptive-average-pooled to ``n_out`` columns (rows unchanged)."""
    width = x.shape[-1]
    if width == n_out:
        return x
    if width % n_out == 0:
        # whole bins of equal length: a mean over a view, with channels innermost
        pixels_last = x.permute(0, 2, 3, 1)
        return pixels_last.unflatten(2, (n_out, width // n_out)).mean(3).permute(0, 3, 1, 2)
    if n_out >= width // 2:
        return pool_axis(x, 3, 0, n_out, n_out)
    return F.adaptive_avg_pool2d(x, (x.shape[-2], n_out))


class QueryRows:
    """``rows(r0, r1)``: rows ``[r0, r1)`` of the query map [B, dim, H, W], channels_last."""

    def __init__(
        self, encoded: torch.Tensor, output_size: tuple[int, int], rope: RoPE2d, kernels: FusedKernels = EAGER_KERNELS,
    ) -> None:
        """encoded: [B, dim, Hg, Wg], the encoder's output at the guidance size; ``kernels`` rotate the rows."""
        self.encoded = encoded
        self.height, self.width = output_size
        self.rope = rope
        self.kernels = kernels

    def __call__(self, row0: int, row1: int) -> torch.Tensor:
        pooled = pool_columns(pool_rows(self.encoded, row0, row1, self.height), self.width)
        return self.rope.rotate_rows(pooled, row0, self.height, self.kernels)
