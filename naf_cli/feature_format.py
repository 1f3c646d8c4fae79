"""Facts of the feature file format (docs/format.md) shared by its writer and its readers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from naf_cli.errors import first_line

FEATURES_GROUP = "features"
# 3: a run id and settings fingerprint bound into every shard and its name, fletcher32 checksums,
# the lock file, damaged.json. Readers still read version 2.
FORMAT_VERSION = 3


def list_datasets(group: h5py.Group, prefix: str = "") -> list[str]:
    """Names of every dataset under ``group``, following links (``visititems`` does not); links
    that cannot be followed are left out (``list_entries`` names them)."""
    return [name for name, problem in list_entries(group, prefix) if not problem]


def list_entries(group: h5py.Group, prefix: str = "") -> list[tuple[str, str]]:
    """(name, problem) for every dataset under ``group`` and every external link that should
    lead to one: ``problem`` is "" for a readable dataset, else why the link cannot be followed.

    An external link's target is looked for beside the file holding the link only: HDF5
    itself falls back to the working folder, where another run's file may sit under that name.
    """
    entries: list[tuple[str, str]] = []
    folder = Path(group.file.filename).parent
    for key in group:
        name = f"{prefix}{key}"
        link = group.get(key, getlink=True)
        if isinstance(link, h5py.ExternalLink) and not (folder / link.filename).is_file():
            entries.append((name, f"its file {folder / link.filename} is missing"))
            continue
        try:
            node = group.get(key)
        except (OSError, KeyError, ValueError) as err:
            entries.append((name, f"cannot be opened ({first_line(err)})"))
            continue
        if isinstance(node, h5py.Dataset):
            entries.append((name, ""))
        elif isinstance(node, h5py.Group):
            entries.extend(list_entries(node, name + "/"))
        elif isinstance(link, h5py.ExternalLink):
            entries.append((name, f"cannot be opened in {folder / link.filename}"))
    return entries


def string_array(values: Sequence[str]) -> np.ndarray:
    """Variable-length UTF-8 strings, as an attribute every HDF5 reader gets as a list of text."""
    return np.array(list(values), dtype=h5py.string_dtype())


def read_skipped(attrs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(image, reason) of every skipped input: the ``skipped_images`` and ``skipped_reasons``
    string arrays (a file of an early version 3 writer holds one JSON string instead)."""
    names = attrs.get("skipped_images", ())
    if isinstance(names, (str, bytes)):
        return [(str(e["image"]), str(e["reason"])) for e in json.loads(plain_attr(names) or "[]")]
    reasons = [str(plain_attr(r)) for r in attrs.get("skipped_reasons", ())]
    names = [str(plain_attr(n)) for n in names]
    return list(zip(names, reasons + [""] * (len(names) - len(reasons)), strict=True))


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
