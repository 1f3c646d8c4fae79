"""The pipeline loop: source -> decode -> transform -> sink, one image at a time.

Inputs that cannot be decoded, or that a transform refuses, are skipped: one line each
through ``Progress.warn`` (the full path, the reason, the fix), recorded in the output and
counted in the summary. With ``strict`` the first such input stops the run instead.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from naf_cli.errors import ImageReadError, InputSkipped, RunError
from naf_cli.images import read_image
from naf_cli.pipeline.memory import peak_bytes
from naf_cli.pipeline.progress import Progress, TqdmProgress
from naf_cli.pipeline.sources import ImageSource
from naf_cli.pipeline.transforms import Transform


class FeatureSink(Protocol):
    """Where per-image features go (``HDF5FeatureSink``); ``output`` is what users open."""

    output: Path

    def begin(self, attrs: Mapping[str, object]) -> None: ...

    def write(self, name: str, features: torch.Tensor, attrs: Mapping[str, object]) -> None: ...

    def finish(self, done: int, skipped: list[tuple[str, str]]) -> Path: ...

    def abort(self) -> Path | None: ...


@dataclass
class RunSummary:
    """What a run did: the file written, images done and skipped (with reasons), time, peak memory."""

    output: Path
    total: int = 0
    done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_bytes: int = 0

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def run_pipeline(
    source: ImageSource,
    transform: Transform,
    sink: FeatureSink,
    progress: Progress | None = None,
    strict: bool = False,
    run_attrs: Mapping[str, object] | None = None,
    description: str = "",
) -> RunSummary:
    """Run ``transform`` over every input of ``source`` into ``sink``; returns the summary.

    ``run_attrs`` are added to the output's root attributes (the CLI records its command line).
    """
    progress = progress or TqdmProgress()
    summary = RunSummary(sink.output, total=len(source))
    started = time.perf_counter()
    animated_said = False
    sink.begin({"kind": transform.kind, "source_root": str(source.root), **transform.file_attrs(), **(run_attrs or {})})
    progress.start(len(source), description or transform.kind)
    try:
        for item in source:
            try:
                image, digest = read_image(item.path)
                result = transform(image)
            except (ImageReadError, InputSkipped) as err:
                # decode errors name the file themselves; refusals by a transform do not
                reason = str(err) if isinstance(err, ImageReadError) else f"{item.path}: {err}"
                if strict:
                    raise RunError(f"{reason} (stopped by --strict; without it such inputs are skipped)") from err
                summary.skipped.append((item.name, reason))
                progress.warn(f"skipped: {reason}")
                progress.advance(item.name)
                continue
            if image.frames > 1 and not animated_said:
                progress.warn(f"note: {item.path} has {image.frames} frames; animated images use their first frame (said once)")
                animated_said = True
            for warning in result.warnings:
                progress.warn(f"warning: {item.path}: {warning}")
            sink.write(item.name, result.features, {
                "source_image": item.name, "source_path": str(item.path.absolute()),
                "source_size": image.size, "source_sha256": digest, "source_bit_depth": image.bit_depth,
                "source_frames": image.frames, "warnings": "; ".join(result.warnings), **result.attrs,
            })
            summary.done += 1
            progress.advance(item.name)
    except BaseException:
        progress.close()
        kept = sink.abort()
        if kept is not None and summary.done:
            progress.warn(f"note: the {summary.done} image(s) finished are kept in {kept}")
        raise
    progress.close()
    summary.seconds = time.perf_counter() - started
    summary.peak_memory_bytes = peak_bytes(transform.device)
    sink.finish(summary.done, summary.skipped)
    return summary
