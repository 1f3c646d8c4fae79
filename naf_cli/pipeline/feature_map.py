"""One image's features as the pipeline hands them on: held whole, or made band by band
while a sink writes them (outputs too large to hold in memory). Every transform returns
this one type whatever the memory, so every caller handles both the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

Bands = Iterator[tuple[int, int, torch.Tensor]]


@dataclass(frozen=True)
class FeatureMap:
    """One image's [C, H, W] features, float32 on the CPU.

    ``bands()`` yields ``(r0, r1, rows)`` with rows [C, r1 - r0, W], top to bottom: the
    whole map as one band when it is held, else computed again at each call (a sink may
    restart). ``tensor()`` is the whole map (assembled from the bands when banded).
    """

    shape: tuple[int, int, int]
    whole: torch.Tensor | None = None
    make_bands: Callable[[], Bands] | None = None

    @classmethod
    def held(cls, tensor: torch.Tensor) -> FeatureMap:
        """A map already computed: ``tensor`` [C, H, W]."""
        channels, height, width = (int(v) for v in tensor.shape)
        return cls((channels, height, width), whole=tensor)

    @classmethod
    def banded(cls, shape: tuple[int, int, int], make_bands: Callable[[], Bands]) -> FeatureMap:
        """A map computed band by band when it is read (``make_bands`` is called once per read)."""
        return cls(shape, make_bands=make_bands)

    @property
    def is_banded(self) -> bool:
        return self.whole is None

    def bands(self) -> Bands:
        if self.whole is not None:
            return iter([(0, self.shape[1], self.whole)])
        assert self.make_bands is not None
        return self.make_bands()

    def tensor(self) -> torch.Tensor:
        if self.whole is not None:
            return self.whole
        out = torch.empty(self.shape)
        for r0, r1, rows in self.bands():
            out[:, r0:r1] = rows
        return out
