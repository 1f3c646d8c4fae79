"""Features too large to hold in memory: made band by band while a sink writes them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

Bands = Iterator[tuple[int, int, torch.Tensor]]


@dataclass(frozen=True)
class BandedFeatures:
    """One image's [C, H, W] features as ``bands()``: ``(r0, r1, rows)`` with rows [C, r1 - r0, W]
    float32 on the CPU, top to bottom. Each call computes them again (a sink may restart)."""

    shape: tuple[int, int, int]
    make_bands: Callable[[], Bands]

    def bands(self) -> Bands:
        return self.make_bands()

    def materialise(self) -> torch.Tensor:
        """All bands in one [C, H, W] tensor (for callers that asked for a tensor)."""
        out = torch.empty(self.shape)
        for r0, r1, rows in self.bands():
            out[:, r0:r1] = rows
        return out


def as_tensor(features: torch.Tensor | BandedFeatures) -> torch.Tensor:
    """``features`` as a tensor, assembling the bands of a ``BandedFeatures``."""
    return features.materialise() if isinstance(features, BandedFeatures) else features
