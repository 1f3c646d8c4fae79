"""Rows of NAF's query map, computed on demand from the encoded guidance image.

The query map is the encoder's output adaptive-average-pooled to the output size, then
rotated by RoPE. Pooling is separable: an output row averages the encoded rows of its bin,
``[floor(r * n / N), ceil((r + 1) * n / N))``, the same bins ``F.adaptive_avg_pool2d``
uses, so any band of rows is computed without the rest of the map.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from naf_cli.modeling.rope import RoPE2d


@lru_cache(maxsize=64)
def pooling_bins(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, length) of each output position's bin on the input axis: LongTensors [n_out]."""
    r = torch.arange(n_out, dtype=torch.long)
    start = r * n_in // n_out
    end = ((r + 1) * n_in + n_out - 1) // n_out
    return start, end - start


def pool_rows(x: torch.Tensor, row0: int, row1: int, n_out: int) -> torch.Tensor:
    """Rows ``[row0, row1)`` of ``x`` [B, C, n_in, W] adaptive-average-pooled to ``n_out`` rows."""
    n_in = x.shape[2]
    if n_in == n_out:
        return x[:, :, row0:row1]
    start, length = (t[row0:row1].to(x.device) for t in pooling_bins(n_in, n_out))
    pooled = None
    for step in range(int(length.max())):
        index = torch.minimum(start + step, start + length - 1)
        weight = ((step < length).to(x.dtype) / length.to(x.dtype))[None, None, :, None]
        term = x.index_select(2, index) * weight
        pooled = term if pooled is None else pooled.add_(term)
    assert pooled is not None
    return pooled


class QueryRows:
    """``rows(r0, r1)``: rows ``[r0, r1)`` of the query map [B, dim, H, W], channels_last."""

    def __init__(self, encoded: torch.Tensor, output_size: tuple[int, int], rope: RoPE2d) -> None:
        """encoded: [B, dim, Hg, Wg], the encoder's output at the guidance size."""
        self.encoded = encoded
        self.height, self.width = output_size
        self.rope = rope

    def __call__(self, row0: int, row1: int) -> torch.Tensor:
        pooled = pool_rows(self.encoded, row0, row1, self.height)
        if pooled.shape[-1] != self.width:
            pooled = F.adaptive_avg_pool2d(pooled, (row1 - row0, self.width))
        return self.rope.rotate_rows(pooled, row0, self.height)
