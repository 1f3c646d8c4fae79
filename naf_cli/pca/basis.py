"""A PCA basis fitted once on a seeded sample of feature vectors, then applied to any map."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# colours span the 1st to the 99th percentile of each component over the fitted sample
LOW_QUANTILE, HIGH_QUANTILE = 0.01, 0.99


@dataclass(frozen=True)
class PCABasis:
    """``mean`` [C], ``axes`` [k, C] (unit vectors, largest variance first), and per component
    the ``low`` and ``high`` [k] projections mapped to 0 and 1."""

    mean: torch.Tensor
    axes: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

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
    axes = vectors[:, torch.argsort(values, descending=True)[:components]].T.contiguous()
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    axes = axes * signs
    projected = centred @ axes.T
    low = torch.quantile(projected, LOW_QUANTILE, dim=0)
    high = torch.quantile(projected, HIGH_QUANTILE, dim=0)
    return PCABasis(mean, axes, low, high)
