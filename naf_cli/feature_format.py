"""Facts of the feature file format (docs/format.md) shared by its writer and its readers."""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

FEATURES_GROUP = "features"
FORMAT_VERSION = 2


def list_datasets(group: h5py.Group, prefix: str = "") -> list[str]:
    """Names of every dataset under ``group``, following links (``visititems`` does not)."""
    names: list[str] = []
    for key in group:
        node = group.get(key)
        name = f"{prefix}{key}"
        if isinstance(node, h5py.Dataset):
            names.append(name)
        elif isinstance(node, h5py.Group):
            names.extend(list_datasets(node, name + "/"))
    return names


def plain_attr(value: Any) -> Any:
    """An attribute as JSON-friendly Python (arrays to lists, numpy scalars to numbers, bytes to text)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def as_attr(value: object) -> object:
    """An h5py-friendly attribute: tuples become arrays, None becomes an empty string."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return np.asarray(value)
    return value
