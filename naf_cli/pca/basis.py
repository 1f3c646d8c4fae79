"""A PCA basis fitted once on a seeded sample of feature vectors, then applied to any map."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from naf_cli.errors import NafError

# colours span the 1st to the 99th percentile of each component over the fitted sample
LOW_QUANTILE, HIGH_QUANTILE = 0.01, 0.99


@dataclass(frozen=True)
class PCABasis:
    """``mean`` [C], ``axes`` [k, C] (unit vectors, largest variance first), and per component
    the ``low`` and ``high`` [k] projections mapped to 0 and 1 (for colours), the ``variance``
    [k] along each axis and the samples' ``total_variance`` (the trace of their covariance)."""

    mean: torch.Tensor
    axes: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    variance: torch.Tensor
    total_variance: float

    @property
    def explained(self) -> torch.Tensor:
        """[k] share of the samples' variance along each axis."""
        return self.variance / max(self.total_variance, 1e-300)

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """[C, r, W] -> [k, r, W], each component scaled to [0, 1] (clamped)."""
        channels, rows, width = features.shape
        if channels != self.channels:
            raise ValueError(f"the basis was fitted on {self.channels} channels, these features have {channels}")
        flat = features.reshape(channels, -1).T.double() - self.mean
        scaled = (flat @ self.axes.T - self.low) / (self.high - self.low).clamp(min=1e-12)
        return scaled.clamp(0, 1).T.reshape(-1, rows, width).float()


def fit_on(maps: Iterable[torch.Tensor], components: int, seed: int, samples: int) -> PCABasis:
    """A basis of ``components`` axes from up to ``samples`` vectors of each [C, h, w] map, at
    positions drawn from one generator seeded with ``seed`` (maps in a fixed order give the
    same basis on every run)."""
    generator = torch.Generator().manual_seed(seed)
    picked = [sample_positions(m.float(), samples, generator) for m in maps]
    if not picked:
        raise NafError("no features to fit a PCA basis on; fix: check that the inputs hold readable images or feature maps")
    return fit_basis(torch.cat(picked), components)


def sample_positions(features: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``count`` feature vectors of [C, H, W] at seeded random positions: [n, C]."""
    flat = features.reshape(features.shape[0], -1)
    n = flat.shape[1]
    if n <= count:
        return flat.T.double()
    picked = torch.randperm(n, generator=generator)[:count]
    return flat[:, picked].T.double()


def fit_basis(samples: torch.Tensor, components: int = 3) -> PCABasis:
    """PCA of ``samples`` [N, C] through the eigenvectors of their covariance.

    Deterministic: eigenvectors are sign-fixed so that each one's largest-magnitude entry is
    positive (the same samples give the same colours on every machine).
    """
    samples = samples.double()
    count, channels = samples.shape
    if components < 1 or components > channels:
        raise ValueError(f"components must be between 1 and {channels} (the channels), got {components}")
    if count < 2:
        raise ValueError("a PCA basis needs at least 2 feature vectors")
    mean = samples.mean(0)
    centred = samples - mean
    covariance = centred.T @ centred / (count - 1)
    values, vectors = torch.linalg.eigh(covariance)  # ascending
    order = torch.argsort(values, descending=True)[:components]
    axes = vectors[:, order].T.contiguous()
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    axes = axes * signs
    projected = centred @ axes.T
    low = torch.quantile(projected, LOW_QUANTILE, dim=0)
    high = torch.quantile(projected, HIGH_QUANTILE, dim=0)
    return PCABasis(mean, axes, low, high, values[order].clamp(min=0), float(values.clamp(min=0).sum()))
