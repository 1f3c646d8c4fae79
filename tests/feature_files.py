"""Plain-h5py helpers for tests: list a feature file's datasets (following links), compare files."""

from __future__ import annotations

import h5py
import numpy as np


def dataset_names(group: h5py.Group, prefix: str = "") -> list[str]:
    """Every dataset below ``group``, following external links (h5py's visititems does not)."""
    names = []
    for key in group:
        node = group[key]
        if isinstance(node, h5py.Dataset):
            names.append(prefix + key)
        else:
            names.extend(dataset_names(node, f"{prefix}{key}/"))
    return sorted(names)


def contents(path) -> dict[str, tuple[bytes, str, dict]]:
    """name -> (raw bytes, dtype, per-image attributes): what the equality rule compares."""
    out = {}
    with h5py.File(path, "r") as f:
        for name in dataset_names(f["features"]):
            data = f["features"][name]
            attrs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in data.attrs.items()}
            out[name] = (np.ascontiguousarray(data[()]).tobytes(), str(data.dtype), attrs)
    return out
