"""The PCA basis a ``--pca K`` run stores under ``/pca`` (docs/format.md), and reads back.

Stored in float32 and applied in float32 exactly as stored, so a file's features are the
projection of the full features by the basis the file holds, and ``reconstruct`` undoes it
up to the components left out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from naf_cli.pca.basis import PCABasis

PCA_GROUP = "pca"


@dataclass(frozen=True)
class StoredBasis:
    """``mean`` [C], ``components`` [K, C] (unit rows, largest variance first), and per component
    the ``explained_variance`` [K] and its share of the total, ``explained_variance_ratio`` [K],
    all float32, as fitted on the run's low-resolution features."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray

    @classmethod
    def of(cls, basis: PCABasis) -> StoredBasis:
        return cls(basis.mean.numpy().astype(np.float32), basis.axes.numpy().astype(np.float32),
                   basis.variance.numpy().astype(np.float32), basis.explained.numpy().astype(np.float32))

    @property
    def count(self) -> int:
        return int(self.components.shape[0])

    @property
    def channels(self) -> int:
        return int(self.components.shape[1])

    @property
    def explained(self) -> float:
        """Share of the fitted features' variance the K components keep."""
        return float(self.explained_variance_ratio.astype(np.float64).sum())

    @property
    def sha256(self) -> str:
        """Of the mean and components as stored (shapes included): what resumes and parts compare."""
        digest = hashlib.sha256()
        for array in (self.mean, self.components):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
        return digest.hexdigest()

    def arrays(self) -> dict[str, np.ndarray]:
        """Dataset paths in the file -> arrays."""
        return {f"{PCA_GROUP}/mean": self.mean, f"{PCA_GROUP}/components": self.components,
                f"{PCA_GROUP}/explained_variance": self.explained_variance,
                f"{PCA_GROUP}/explained_variance_ratio": self.explained_variance_ratio}

    @classmethod
    def read(cls, group: Mapping[str, object], prefix: str = "") -> StoredBasis:
        """From the ``/pca`` group of a file (an h5py group), or a mapping of arrays by
        ``prefix`` + name (``read_arrays``); a KeyError when one is missing."""
        def get(key: str) -> np.ndarray:
            return np.asarray(group[prefix + key][()], dtype=np.float32)  # type: ignore[index]

        return cls(get("mean"), get("components"), get("explained_variance"), get("explained_variance_ratio"))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """[C, r, W] -> [K, r, W] float32: the coordinates of ``features - mean`` along the components."""
        channels, rows, width = features.shape
        if channels != self.channels:
            raise ValueError(f"the basis was fitted on {self.channels} channels, these features have {channels}")
        centred = features.reshape(channels, -1).float() - torch.from_numpy(self.mean)[:, None]
        return (torch.from_numpy(self.components) @ centred).reshape(self.count, rows, width)

    def reconstruct(self, coordinates: np.ndarray) -> np.ndarray:
        """[K, H, W] -> [C, H, W] float32: the features in the original channels, less what the
        components left out keep."""
        count, height, width = coordinates.shape
        flat = coordinates.reshape(count, -1).astype(np.float32)
        return (self.components.T @ flat + self.mean[:, None]).reshape(self.channels, height, width)
