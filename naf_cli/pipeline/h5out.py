"""The HDF5 output file: one chunked float16 dataset per image, attributes that describe it.

Layout (plain h5py reads it)::

    /                       attrs: producer, backbone, upsampler, checkpoint hash, scale...
    /features/<image path>  [C, H, W] float16 (float32 for an image whose values exceed
                            float16's range), attrs: source_image, sizes

The file is written as ``<output>.partial`` and renamed when complete, so an interrupted
run never leaves a truncated file under the final name.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import torch

from naf_cli.errors import OutputError
from naf_cli.pipeline.sizes import chunk_shape

FEATURES_GROUP = "features"


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


class FeatureFile:
    """Context manager that writes features to ``<output>.partial`` and publishes it on success."""

    def __init__(self, output: Path, attrs: dict, overwrite: bool = False) -> None:
        self.output = Path(output)
        self.partial = partial_path(self.output)
        if self.output.exists() and not overwrite:
            raise OutputError(f"{self.output} already exists; fix: pass --overwrite or choose another -o path")
        if not self.output.parent.is_dir():
            raise OutputError(f"folder {self.output.parent} does not exist; fix: create it or choose another -o path")
        self.attrs = attrs
        self.handle: h5py.File | None = None

    def __enter__(self) -> "FeatureFile":
        try:
            self.handle = h5py.File(self.partial, "w")
        except OSError as err:
            raise OutputError(f"cannot create {self.partial}: {err}; fix: check the -o path and its permissions") from err
        for key, value in self.attrs.items():
            self.handle.attrs[key] = value
        self.handle.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.handle.attrs["layout"] = "features/<image path relative to the input folder>: [C, H, W] float16"
        self.handle.create_group(FEATURES_GROUP)
        return self

    def write(self, name: str, features: torch.Tensor, attrs: dict) -> None:
        """Store features [C, H, W] as float16 under ``features/<name>``."""
        assert self.handle is not None
        features = features.detach().to("cpu")
        array = features.to(torch.float16).numpy()
        if not np.isfinite(array).all() and torch.isfinite(features).all():
            # values beyond float16's range (+-65504) would become inf: keep this image in float32
            array = features.float().numpy()
        try:
            dataset = self.handle[FEATURES_GROUP].create_dataset(
                name, data=array, chunks=chunk_shape(*array.shape, itemsize=array.itemsize)
            )
            for key, value in attrs.items():
                dataset.attrs[key] = value
        except OSError as err:
            raise OutputError(f"cannot write features of {name} to {self.partial}: {err}; fix: free disk space or choose another -o path") from err

    def record_failures(self, failures: list[tuple[str, str]]) -> None:
        assert self.handle is not None
        self.handle.attrs["failed_images"] = json.dumps([{"image": p, "error": e} for p, e in failures])

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.handle is not None
        self.handle.close()
        if exc_type is None:
            os.replace(self.partial, self.output)


def as_attr(value) -> object:
    """h5py-friendly attribute: tuples become int arrays, None becomes an empty string."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return np.asarray(value)
    return value
