"""The pipeline loop: source -> decode -> transform -> sink, one image at a time.

Inputs that cannot be decoded, or that a transform refuses, are skipped: one line each
through ``Progress.warn`` (the full path, the reason, the fix), recorded in the output and
counted in the summary. With ``strict`` the first such input stops the run instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from naf_cli.errors import ImageReadError, InputSkipped, RunError
from naf_cli.pipeline.memory import peak_bytes
from naf_cli.pipeline.progress import Progress, TqdmProgress
from naf_cli.pipeline.sources import ImageSource
from naf_cli.pipeline.streaming import BackgroundWriter, decoded_inputs, default_workers
from naf_cli.pipeline.transforms import Transform


class FeatureSink(Protocol):
    """Where per-image features go (``HDF5FeatureSink``); ``output`` is what users open.

    ``prepare`` runs before any work and returns the names a previous run already finished.
    """

    output: Path

    def prepare(self, run_settings: Mapping[str, object]) -> set[str]: ...

    def begin(self, attrs: Mapping[str, object], total: int = 0) -> None: ...

    def write(self, name: str, features: torch.Tensor, attrs: Mapping[str, object]) -> None: ...

    def record_skip(self, name: str, reason: str) -> None: ...

    def finish(self) -> Path: ...

    def abort(self) -> Path | None: ...


@dataclass
class RunSummary:
    """What a run did: the file written, images done and skipped (with reasons), time, peak memory."""

    output: Path
    total: int = 0
    done: int = 0
    resumed: int = 0  # finished by an earlier run, not redone
    decode_seconds: float = 0.0  # reading and decoding, summed over the workers
    compute_seconds: float = 0.0  # the transform (backbone, upsampler), on the main thread
    write_seconds: float = 0.0  # the writer thread
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_bytes: int = 0

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def busy_fraction(self) -> float:
        """Share of the wall time the model was computing."""
        return self.compute_seconds / self.seconds if self.seconds > 0 else 0.0


def run_pipeline(
    source: ImageSource,
    transform: Transform,
    sink: FeatureSink,
    progress: Progress | None = None,
    strict: bool = False,
    run_attrs: Mapping[str, object] | None = None,
    description: str = "",
    workers: int | None = None,
) -> RunSummary:
    """Run ``transform`` over every input of ``source`` into ``sink``; returns the summary.

    ``run_attrs`` are added to the output's root attributes (the CLI records its command line).
    ``workers`` decode ahead of the model (None: one core is left to the model, at most 4;
    0: decode inline); writing runs on a thread behind it.
    """
    progress = progress or TqdmProgress()
    summary = RunSummary(sink.output, total=len(source))
    started = time.perf_counter()
    animated_said = False
    already_done = sink.prepare(run_settings(transform))
    sink.begin({"kind": transform.kind, "source_root": str(source.root), **transform.file_attrs(), **(run_attrs or {})},
               total=len(source))
    progress.start(len(source), description or transform.kind)
    if already_done:
        progress.warn(f"resuming {sink.output}: {len(already_done)} image(s) already done are not redone")
    for item in source:
        if item.name in already_done:
            summary.resumed += 1
            progress.advance(item.name)
    pending = [item for item in source if item.name not in already_done]
    workers = default_workers() if workers is None else workers
    writer = BackgroundWriter(sink)
    try:
        for record in decoded_inputs(pending, workers, pin_memory=transform.device.type == "cuda"):
            item = pending[record.index]
            summary.decode_seconds += record.seconds
            computing = time.perf_counter()
            try:
                if record.image is None:
                    raise ImageReadError(record.error)
                image, digest = record.image, record.digest
                result = transform(image, item.name)
            except (ImageReadError, InputSkipped) as err:
                # decode errors name the file themselves; refusals by a transform do not
                reason = str(err) if isinstance(err, ImageReadError) else f"{item.path}: {err}"
                if strict:
                    raise RunError(f"{reason} (stopped by --strict; without it such inputs are skipped)") from err
                summary.skipped.append((item.name, reason))
                sink.record_skip(item.name, reason)
                progress.warn(f"skipped: {reason}")
                progress.advance(item.name)
                continue
            if image.frames > 1 and not animated_said:
                progress.warn(f"note: {item.path} has {image.frames} frames; animated images use their first frame (said once)")
                animated_said = True
            for warning in result.warnings:
                progress.warn(f"warning: {item.path}: {warning}")
            summary.compute_seconds += time.perf_counter() - computing
            writer.write(item.name, result.features, {
                "source_image": item.name, "source_path": str(item.path.absolute()),
                "source_size": image.size, "source_sha256": digest, "source_bit_depth": image.bit_depth,
                "source_frames": image.frames, "warnings": "; ".join(result.warnings), **result.attrs,
            })
            summary.done += 1
            progress.advance(item.name)
        writer.close()
    except BaseException:
        progress.close()
        with contextlib.suppress(BaseException):
            writer.close()  # results already computed are still written
        kept = sink.abort()
        if kept is not None:
            progress.warn(f"note: finished images are kept in {kept}; rerun the same command to resume")
        raise
    progress.close()
    summary.seconds = time.perf_counter() - started
    summary.peak_memory_bytes = peak_bytes(transform.device)
    summary.write_seconds = writer.seconds
    sink.finish()
    return summary


# attributes that name where things were read from; their content hashes are compared instead
_LOCATION_KEYS = frozenset({"backbone_weights", "checkpoint", "features_from"})


def run_settings(transform: Transform) -> dict[str, object]:
    """What a resumed run must share with the run it continues: the transform's settings."""
    attrs = {key: value for key, value in transform.file_attrs().items() if key not in _LOCATION_KEYS}
    return {"kind": transform.kind, **attrs}
