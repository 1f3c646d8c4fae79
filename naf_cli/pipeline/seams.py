"""The seams of the pipeline: what a transform returns, and what a transform, a sink and a
progress reporter must offer the run loop (``naf_cli.pipeline.run``).

A new sink format, backbone family or reporter plugs in here. This module imports nothing
else of the pipeline at run time, so every other module can depend on it without a circle.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from naf_cli.images import DecodedImage
    from naf_cli.pipeline.feature_map import FeatureMap
    from naf_cli.pipeline.hdf5.layout import RunStatus
    from naf_cli.pipeline.partition import Partition

AttrValue = str | int | float | bytes | tuple[int, ...] | tuple[float, ...]


@dataclass
class Result:
    """One image's output: its features (held whole, or computed band by band as the sink
    writes them), attributes and warnings for it."""

    features: FeatureMap
    attrs: dict[str, AttrValue] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Transform(Protocol):
    """What the loop runs on decoded images, a batch at a time (``naf_cli.pipeline.transforms``).

    ``run_batch(images, names)`` returns one ``Result`` per image; images batched together
    share ``bucket_key``, which is known before any model runs. ``file_attrs`` describes the
    transform for the output (and, less where things were read from, what a resume must share);
    ``file_arrays`` are small arrays the output must hold beside the features (``--pca``'s
    basis), by their path in the file.
    """

    kind: str  # what the output holds: "extract", "upsample" or "denoise"
    memory_fix: str  # what to change when one image does not fit in memory (the end of a one-line error)

    @property
    def device(self) -> torch.device: ...

    def file_attrs(self) -> dict[str, AttrValue]: ...

    def file_arrays(self) -> dict[str, np.ndarray]: ...

    def bucket_key(self, image: DecodedImage, name: str) -> Hashable: ...

    def run_batch(self, images: Sequence[DecodedImage], names: Sequence[str]) -> list[Result]: ...


class Sink(Protocol):
    """Where per-image features go (``HDF5FeatureSink``); ``output`` is what users open.

    ``prepare`` runs before any work, learns which part of a split run this process writes,
    and returns the names earlier runs (or sibling parts) already finished; ``notices`` are
    the lines it has for the user (what it resumes or keeps, warnings), said before the work. ``end_group`` marks the end of a batch group (a sink
    may publish only whole groups). ``status`` is the whole run's state once ``finish``
    returns. ``begin`` gets the run's attributes, every input's name and the transform's
    ``file_arrays``. ``finish`` and ``abort`` end the run (and give back what ``prepare`` took).
    """

    output: Path
    status: RunStatus | None
    notices: list[str]

    def prepare(self, run_settings: Mapping[str, object], partition: Partition = ...) -> set[str]: ...

    def begin(self, attrs: Mapping[str, object], names: Sequence[str] = (), arrays: Mapping[str, np.ndarray] | None = None) -> None: ...

    def write(self, name: str, features: FeatureMap, attrs: Mapping[str, object]) -> None: ...

    def end_group(self) -> None: ...

    def record_skip(self, name: str, reason: str) -> None: ...

    def finish(self) -> Path: ...

    def abort(self) -> Path | None: ...


class Progress(Protocol):
    """Receives a run's events (``naf_cli.pipeline.progress`` and ``naf_cli.cli.progress``
    implement it). ``warn`` gets one whole line, never to be wrapped or cut."""

    def start(self, total: int, description: str) -> None: ...

    def advance(self, name: str) -> None: ...

    def warn(self, line: str) -> None: ...

    def close(self) -> None: ...
