"""NAF as an image-restoration filter (the paper's section 6).

The same blocks as the upsampler, with kernel 15: the noisy image is both the guidance
and the values, so the output has the input's size and the keys are the queries (pooling
to the same size is the identity). Each output pixel is a softmax-weighted mix of the
noisy pixels in the 15 x 15 window around it.

Values have 3 channels, and the 256 query channels split into 4 heads. Every head gets
the same 3-channel value map and the 4 head outputs are averaged: each head's attention
is used, and the result stays a convex combination of noisy pixels (so it needs no
clipping and cannot invent colours). One head alone would give up the multi-head
attention; padding to 4 channels would let one head only ever mix a constant.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from naf_cli.errors import ShapeError
from naf_cli.modeling.naf import NAF

RESTORATION_KERNEL = 15


class Denoiser(nn.Module):
    """``forward(noisy)``: [B, 3, H, W] in [0, 1] -> [B, 3, H, W], the restored image."""

    def __init__(self, naf: NAF | None = None) -> None:
        super().__init__()
        self.naf = naf if naf is not None else NAF(kernel_size=RESTORATION_KERNEL)

    def values(self, noisy: torch.Tensor) -> torch.Tensor:
        """The value map of every head: [B, 3, H, W] -> [B, 3 * heads, H, W]."""
        return noisy.repeat(1, self.naf.num_heads, 1, 1)

    def merge_heads(self, mixed: torch.Tensor) -> torch.Tensor:
        """[B, 3 * heads, r, W] -> [B, 3, r, W], the mean of the heads' outputs."""
        return mixed.unflatten(1, (self.naf.num_heads, 3)).mean(1)

    def check(self, noisy: torch.Tensor) -> None:
        if noisy.ndim != 4 or noisy.shape[1] != 3:
            raise ShapeError(f"the denoiser takes RGB images [B, 3, H, W], got {list(noisy.shape)}")

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        """noisy: [B, 3, H, W], RGB in [0, 1] -> [B, 3, H, W]."""
        self.check(noisy)
        size = (int(noisy.shape[-2]), int(noisy.shape[-1]))
        return self.merge_heads(self.naf(noisy, self.values(noisy), size))

    def forward_bands(self, noisy: torch.Tensor, band_rows: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """The restored image in bands ``(r0, r1, [B, 3, r1 - r0, W])``; the encoder runs on the
        whole image (see ``tiles.denoise_in_tiles`` for images too large for that). Inference only."""
        self.check(noisy)
        size = (int(noisy.shape[-2]), int(noisy.shape[-1]))
        for r0, r1, rows in self.naf.forward_bands(noisy, self.values(noisy), size, band_rows):
            yield r0, r1, self.merge_heads(rows)
