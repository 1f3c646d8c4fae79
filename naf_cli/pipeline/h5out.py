"""The HDF5 feature sink: one chunked dataset per image, attributes that describe it.

Layout (plain h5py reads it; docs/format.md is the reference)::

    /                       attrs: producer, command, kind, backbone, upsampler, counts...
    /features/<image name>  [C, H, W] float16 (float32 for an image whose values exceed
                            float16's range), attrs: source path, size, sha256, sizes

The file is written as ``<output>.partial`` and renamed when complete, so an interrupted
run never leaves a truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import torch

import naf_cli
from naf_cli.errors import OutputError, RunError
from naf_cli.pipeline.sizes import chunk_shape

FEATURES_GROUP = "features"
FORMAT_VERSION = 1


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def as_attr(value: object) -> object:
    """h5py-friendly attribute: tuples become arrays, None becomes an empty string."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return np.asarray(value)
    return value


class HDF5FeatureSink:
    """Writes features to ``<output>.partial`` and publishes it as ``output`` when the run completes.

    The output path is checked on construction, before any work: not a folder, its folder
    exists, and it does not exist unless ``overwrite``.
    """

    def __init__(self, output: Path, overwrite: bool = False) -> None:
        self.output = Path(output)
        self.partial = partial_path(self.output)
        if self.output.is_dir():
            raise OutputError(f"-o {self.output} is a folder; fix: name an .h5 file, e.g. -o {self.output / 'features.h5'}")
        if self.output.exists() and not overwrite:
            raise OutputError(f"{self.output} already exists; fix: pass --overwrite or choose another -o path")
        if not self.output.parent.is_dir():
            raise OutputError(f"folder {self.output.parent} does not exist; fix: create it or choose another -o path")
        self.handle: h5py.File | None = None

    def begin(self, attrs: Mapping[str, object]) -> None:
        """Create the partial file with the run's attributes."""
        try:
            self.handle = h5py.File(self.partial, "w")
        except OSError as err:
            raise OutputError(f"cannot create {self.partial}: {err}; fix: check the -o path and its permissions") from err
        self.handle.attrs["format_version"] = FORMAT_VERSION
        self.handle.attrs["producer"] = f"naf-cli {naf_cli.__version__}"
        self.handle.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for key, value in attrs.items():
            self.handle.attrs[key] = as_attr(value)
        self.handle.create_group(FEATURES_GROUP)

    def write(self, name: str, features: torch.Tensor, attrs: Mapping[str, object]) -> None:
        """Store features [C, H, W] as float16 under ``features/<name>``."""
        assert self.handle is not None, "begin() first"
        features = features.detach().to("cpu")
        array = features.to(torch.float16).numpy()
        if not np.isfinite(array).all() and torch.isfinite(features).all():
            # values beyond float16's range (+-65504) would become inf: keep this image in float32
            array = features.float().numpy()
        try:
            dataset = self.handle[FEATURES_GROUP].create_dataset(
                name, data=array, chunks=chunk_shape(array.shape[0], array.shape[1], array.shape[2], itemsize=array.itemsize)
            )
            for key, value in attrs.items():
                dataset.attrs[key] = as_attr(value)
            self.handle.flush()
        except OSError as err:
            raise RunError(f"cannot write features of {name} to {self.partial}: {err}; "
                           f"fix: free disk space or choose another -o path") from err

    def finish(self, done: int, skipped: list[tuple[str, str]]) -> Path:
        """Record the counts and skipped inputs, close, and publish the file under its final name."""
        assert self.handle is not None
        self.handle.attrs["images_done"] = done
        self.handle.attrs["images_skipped"] = len(skipped)
        self.handle.attrs["skipped_images"] = json.dumps([{"image": n, "reason": r} for n, r in skipped], ensure_ascii=False)
        self.handle.close()
        self.handle = None
        os.replace(self.partial, self.output)
        return self.output

    def abort(self) -> Path | None:
        """Close after a failure; the partial file keeps the images finished so far."""
        if self.handle is None:
            return None
        # a full disk can fail the close too; the partial file then is what it is
        with contextlib.suppress(Exception):
            self.handle.close()
        self.handle = None
        return self.partial if self.partial.exists() else None
