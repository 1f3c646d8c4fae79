"""The pipeline loop: source -> decode -> transform -> sink, one image at a time.

Inputs that cannot be decoded, or that a transform refuses, are skipped: one line each
through ``Progress.warn`` (the full path, the reason, the fix), recorded in the output and
counted in the summary. With ``strict`` the first such input stops the run instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from naf_cli.errors import ImageReadError, InputSkipped, OptionError, RunError, first_line
from naf_cli.images import DecodedImage
from naf_cli.pipeline.hdf5.layout import RunStatus
from naf_cli.pipeline.memory import is_out_of_memory, make_current, peak_bytes
from naf_cli.pipeline.partition import Partition
from naf_cli.pipeline.progress import TqdmProgress
from naf_cli.pipeline.resume import run_settings
from naf_cli.pipeline.seams import Progress, Result, Sink, Transform
from naf_cli.pipeline.sources import ImageSource, InputItem
from naf_cli.pipeline.streaming import BackgroundWriter, Decoded, decoded_inputs, default_workers


@dataclass
class RunSummary:
    """What a run (or one part of a split run) did: the file written, images done and skipped
    (with reasons), time, peak memory; ``status``: the whole run's state at the end."""

    output: Path
    total: int = 0  # inputs of this part (all inputs for a whole run)
    done: int = 0
    resumed: int = 0  # finished by an earlier run, not redone
    decode_seconds: float = 0.0  # reading and decoding, summed over the workers
    compute_seconds: float = 0.0  # the transform (backbone, upsampler), on the main thread
    write_seconds: float = 0.0  # the writer thread
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    partition: Partition = field(default_factory=Partition)
    status: RunStatus | None = None

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def busy_fraction(self) -> float:
        """Share of the wall time the model was computing."""
        return self.compute_seconds / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RunContext:
    """What the loop carries from one image to the next: where skips are recorded and said, the
    summary being filled, ``strict`` (the first unusable input stops the run), notes said once."""

    sink: Sink
    progress: Progress
    summary: RunSummary
    strict: bool = False
    said: set[str] = field(default_factory=set)

    def skip(self, item: InputItem, err: Exception) -> None:
        """Record an input that cannot be used, or stop the run with ``strict``."""
        # decode errors name the file themselves; refusals by a transform do not
        reason = str(err) if isinstance(err, ImageReadError) else f"{item.path}: {err}"
        if self.strict:
            raise RunError(f"{reason} (stopped by --strict; without it such inputs are skipped)") from err
        self.summary.skipped.append((item.name, reason))
        self.sink.record_skip(item.name, reason)
        self.progress.warn(f"skipped: {reason}")

    def say_once(self, topic: str, line: str) -> None:
        """``line`` the first time ``topic`` comes up in this run, nothing after."""
        if topic not in self.said:
            self.said.add(topic)
            self.progress.warn(line)


def run_pipeline(
    source: ImageSource,
    transform: Transform,
    sink: Sink,
    progress: Progress | None = None,
    *,
    strict: bool = False,
    run_attrs: Mapping[str, object] | None = None,
    description: str = "",
    workers: int | None = None,
    batch_size: int = 1,
    partition: Partition = Partition(),
    notices: Sequence[str] = (),
) -> RunSummary:
    """Run ``transform`` over every input of ``source`` into ``sink``; returns the summary.

    ``run_attrs`` are added to the output's root attributes (the CLI records its command line).
    ``workers`` decode ahead of the model (None: one core is left to the model, at most 4;
    0: decode inline); writing runs on a thread behind it. Images of one group of
    ``batch_size`` names that share a ``bucket_key`` run as one batch.

    With ``partition`` (part I of N), this process takes every N-th batch group and writes
    its own shards of the same output; the run is complete when every part has finished
    (``summary.status``), whatever process finishes last. ``notices`` are said once the output
    has accepted the run (after the sink's own).
    """
    check_batch_size(batch_size)
    make_current(transform.device)
    progress = progress or TqdmProgress()
    starts = partition.group_starts(len(source), batch_size)
    mine = [item for start in starts for item in source.items[start:start + batch_size]]
    summary = RunSummary(sink.output, total=len(mine), partition=partition)
    started = time.perf_counter()
    already_done = sink.prepare(run_settings(transform, batch_size), partition)
    writer: BackgroundWriter | None = None
    decoded: Generator[Decoded, None, None] | None = None
    try:
        sink.begin({"kind": transform.kind, "source_root": str(source.root), **transform.file_attrs(), **(run_attrs or {})},
                   names=[item.name for item in source], arrays=transform.file_arrays())
        for notice in (*sink.notices, *notices):
            progress.warn(notice)
        summary.resumed = sum(item.name in already_done for item in mine)
        # progress counts the work left, so its rate and time left are this run's
        progress.start(len(mine) - summary.resumed, description or transform.kind)
        workers = default_workers() if workers is None else workers
        # batches come from fixed groups of the global name order, whatever is already done and
        # whatever the split, so every image is computed exactly as in one uninterrupted run; a
        # group with one image to redo (a missing shard, a damaged copy) is computed whole
        every_group = [source.items[start:start + batch_size] for start in starts]
        groups = [group for group in every_group if any(item.name not in already_done for item in group)]
        decoded = decoded_inputs([item for group in groups for item in group], workers,
                                 pin_memory=transform.device.type == "cuda")
        writer = BackgroundWriter(sink)
        context = RunContext(sink, progress, summary, strict)
        for group in groups:
            records = [next(decoded) for _ in group]
            ready: list[tuple[InputItem, DecodedImage, str]] = []
            for item, record in zip(group, records, strict=True):
                summary.decode_seconds += record.seconds
                if record.image is None:
                    if item.name not in already_done:
                        context.skip(item, ImageReadError(record.error))
                    continue
                ready.append((item, record.image, record.digest))
            computing = time.perf_counter()
            results = _compute_group(ready, transform, context)
            summary.compute_seconds += time.perf_counter() - computing
            # a group is written only when whole: a shard never holds part of one
            for item, image, digest in ready:
                if item.name not in results or item.name in already_done:
                    continue
                result = results[item.name]
                if image.frames > 1:
                    context.say_once("animated", f"note: {item.path} has {image.frames} frames; animated images use their first "
                                                 f"frame (said once)")
                for warning in result.warnings:
                    progress.warn(f"warning: {item.path}: {warning}")
                writer.write(item.name, result.features, {
                    "source_image": item.name, "source_path": str(item.path.absolute()),
                    "source_size": image.size, "source_sha256": digest, "source_bit_depth": image.bit_depth,
                    "source_frames": image.frames, "warnings": "; ".join(result.warnings), **result.attrs,
                })
                summary.done += 1
            writer.end_group()
            if any(result.features.is_banded for result in results.values()):
                banding = time.perf_counter()
                writer.wait()
                summary.compute_seconds += time.perf_counter() - banding
            for item in group:
                if item.name not in already_done:
                    progress.advance(item.name)
        decoded.close()
        writer.close()
    except BaseException:
        if decoded is not None:  # the decoding workers stop before anything is said
            with contextlib.suppress(Exception, KeyboardInterrupt):  # a second Ctrl-C must not skip abort()
                decoded.close()
        progress.close()
        if writer is not None:
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
    summary.status = sink.status
    return summary


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise OptionError(f"--batch-size must be at least 1, got {batch_size}; fix: --batch-size 1 (or 8 on a GPU)")


def _compute_group(ready: list[tuple[InputItem, DecodedImage, str]], transform: Transform, context: RunContext) -> dict[str, Result]:
    """Results by name for one group: one batch per bucket, halved while it does not fit in memory."""
    buckets: dict[object, list[tuple[InputItem, DecodedImage]]] = {}
    for item, image, _ in ready:
        buckets.setdefault(transform.bucket_key(image, item.name), []).append((item, image))
    results: dict[str, Result] = {}
    pending = list(buckets.values())
    while pending:
        batch = pending.pop(0)
        out_of_memory = ""
        try:
            outputs = transform.run_batch([image for _, image in batch], [item.name for item, _ in batch])
        except (InputSkipped, ImageReadError, MemoryError, RuntimeError) as err:
            if isinstance(err, RuntimeError) and not is_out_of_memory(err):
                raise
            if len(batch) == 1 and isinstance(err, InputSkipped | ImageReadError):
                context.skip(batch[0][0], err)
                continue
            out_of_memory = first_line(err)
        if out_of_memory:
            # out of the except block: its traceback, which holds the batch's tensors, is gone,
            # so the cache really gets their memory back
            if transform.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(batch) == 1:
                context.skip(batch[0][0], InputSkipped(f"out of memory ({out_of_memory}); fix: {transform.memory_fix}"))
                continue
            context.say_once("oom", f"note: a batch of {len(batch)} does not fit in memory; retrying with smaller batches")
            half = len(batch) // 2
            pending[:0] = [batch[:half], batch[half:]]
            continue
        for (item, _), output in zip(batch, outputs, strict=True):
            results[item.name] = output
    return results
