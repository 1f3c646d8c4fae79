"""What `naf extract` and `naf upsample` share: check everything, build the pipeline, run it,
report. Every check that can fail runs before the first image is read."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from naf_cli.cli.errors import EXIT_OK, EXIT_SKIPPED
from naf_cli.errors import OptionError

if TYPE_CHECKING:
    from naf_cli.backbones import BackboneSpec
    from naf_cli.pipeline import HDF5FeatureSink, ImageSource, OutputSize
    from naf_cli.pipeline.distributed import TorchrunRank
    from naf_cli.pipeline.partition import Partition
    from naf_cli.pipeline.progress import Progress
    from naf_cli.pipeline.run import RunSummary
    from naf_cli.pipeline.transforms import Transform


@dataclass(frozen=True)
class Split:
    """Which part of the run this process does: ``--shard I/N``, a torchrun rank, or all of it."""

    partition: Partition
    rank: TorchrunRank | None = None

    @classmethod
    def of(cls, options: JobOptions) -> Split:
        from naf_cli.pipeline.distributed import torchrun_rank
        from naf_cli.pipeline.partition import Partition

        rank = torchrun_rank()
        if options.shard is None:
            return cls(rank.partition if rank else Partition(), rank)
        if rank is not None:
            raise OptionError("--shard and torchrun both split the run; fix: drop --shard under torchrun (its ranks split the inputs)")
        partition = Partition.parse(options.shard)
        if options.overwrite and not partition.is_whole:
            raise OptionError(f"--overwrite with --shard {options.shard} would delete the other parts' work; fix: delete "
                              f"{options.output} and {options.output}.shards before starting the parts")
        return cls(partition)


@dataclass(frozen=True)
class JobOptions:
    """Options common to both commands, as typed by the user."""

    inputs: list[Path]
    output: Path
    vfm: str
    vfm_weights: Path | None
    long_side: int
    globs: list[str]
    files_from: Path | None
    strict: bool
    device: str
    overwrite: bool
    out_dtype: str = "float16"
    compression: str = "none"
    shard_images: int | None = None
    workers: int | None = None
    batch_size: int = 1
    shard: str | None = None
    layer: int | None = None
    backbone_precision: str = "fp32"


@dataclass(frozen=True)
class UpsampleOptions:
    upsampler: str
    checkpoint: str | None
    output_size: str
    scale: float | None
    image_root: Path | None = None
    max_memory: str | None = None


def feature_file_input(inputs: list[Path]) -> Path | None:
    """The extract file when the only input is an HDF5 file, else None."""
    if len(inputs) != 1 or not inputs[0].is_file() or inputs[0].suffix.lower() not in (".h5", ".hdf5", ".hdf"):
        return None
    return inputs[0]


def command_line() -> str:
    return shlex.join(["naf", *sys.argv[1:]])


def run_job(options: JobOptions, upsample: UpsampleOptions | None) -> int:
    """Run extract (``upsample`` None) or upsample; returns the exit code (0, or 3 with skipped inputs)."""
    from naf_cli.backbones import get_spec
    from naf_cli.pipeline import HDF5FeatureSink, OutputSize
    from naf_cli.pipeline.memory import parse_bytes
    from naf_cli.pipeline.run import check_batch_size
    from naf_cli.pipeline.sizes import check_positive
    from naf_cli.upsamplers import get_factory

    # 1. options and paths: nothing loaded, nothing written
    split = Split.of(options)
    check_positive("--long-side", options.long_side)
    check_batch_size(options.batch_size)
    if options.workers is not None and options.workers < 0:
        raise OptionError(f"--workers must be 0 or more, got {options.workers}; fix: e.g. --workers 2, or 0 to decode "
                          f"in the main process")
    limit = parse_bytes(upsample.max_memory) if upsample else None
    rule = OutputSize.parse(upsample.output_size, upsample.scale) if upsample else None
    spec = get_spec(options.vfm)
    if upsample is not None:
        get_factory(upsample.upsampler)
    sink = HDF5FeatureSink(options.output, options.overwrite, options.out_dtype, options.compression, options.shard_images)
    if split.rank is None:
        sink.claim(split.partition)  # another live run on this output is refused before anything loads (torchrun: at the start check)
    try:
        return _build_and_run(options, upsample, split, sink, spec, rule, limit)
    finally:
        sink.release()


def _build_and_run(options: JobOptions, upsample: UpsampleOptions | None, split: Split, sink: HDF5FeatureSink,
                   spec: BackboneSpec, rule: OutputSize | None, limit: int | None) -> int:
    import shutil

    from naf_cli.backbones import load_backbone
    from naf_cli.cli.options import resolve_device
    from naf_cli.pipeline import ExtractAndUpsample, ExtractFeatures, ImageSource, UpsampleFeatures
    from naf_cli.pipeline.distributed import rank_device
    from naf_cli.pipeline.memory import available_bytes, gib, human_bytes
    from naf_cli.upsamplers import load_upsampler

    device = resolve_device(rank_device(options.device, split.rank) if split.rank else options.device)
    stored_path = feature_file_input(options.inputs)
    if stored_path is not None:
        if upsample is None or rule is None:
            raise OptionError(f"{stored_path} is a feature file; fix: naf extract takes images (naf upsample takes an extract file)")
        return _upsample_stored(stored_path, sink, device, upsample, rule, options, split)
    source = ImageSource(options.inputs, options.globs, options.files_from)
    if not len(source):
        where = ", ".join(map(str, options.inputs)) or str(options.files_from)
        raise OptionError(f"no images found in {where}; fix: pass a folder with .jpg/.png/... files, or check --glob")
    # 2. models, and what they imply for the output
    transform: ExtractFeatures | ExtractAndUpsample
    if upsample is not None and rule is not None:
        upsampler, info = load_upsampler(upsample.upsampler, upsample.checkpoint, device)
        backbone = load_backbone(spec.name, options.vfm_weights, device, options.layer, options.backbone_precision)
        upsampler.check_channels(backbone.info.channels)
        largest = rule.largest(backbone.info.patch_size, options.long_side)
        if largest is not None:
            import torch

            # refuse only what can never work: the least an output needs in memory (band by band
            # where the upsampler can, guided by the smallest image) and its size on disk
            need = upsampler.banded_peak_bytes(backbone.info.channels, largest, guidance_size=(1, 1))
            have = available_bytes(torch.device(device))
            have = have if limit is None else min(have, limit)
            what = f"outputs up to {largest[0]}x{largest[1]} with {backbone.info.channels} channels ({rule.describe()})"
            fix = "fix: a smaller --scale, --output-size or --long-side"
            if need > have:
                raise OptionError(f"{what} need about {gib(need)} per image, more than the {gib(have)} available; {fix}")
            stored = backbone.info.channels * largest[0] * largest[1] * (2 if options.out_dtype == "float16" else 4)
            folder = options.output.absolute().parent
            free = shutil.disk_usage(folder).free if folder.exists() else stored
            if stored > free:
                # found before any work: exit 2, as for every option that cannot work
                raise OptionError(f"{what} take about {human_bytes(stored)} each on disk, more than the {human_bytes(free)} "
                                  f"free on the disk of {folder}; fix: free disk space, -o on "
                                  f"another disk, or a smaller --scale, --output-size or --long-side")
        transform = ExtractAndUpsample(ExtractFeatures(backbone, options.long_side), UpsampleFeatures(upsampler, info, rule, limit))
        description = f"{spec.name} + {info.name} ({rule.describe()})"
    else:
        backbone = load_backbone(spec.name, options.vfm_weights, device, options.layer, options.backbone_precision)
        transform = ExtractFeatures(backbone, options.long_side)
        description = f"{spec.name} features"
    # 3. the run
    return _run(source, transform, sink, options, description, split)


def _upsample_stored(path: Path, sink: HDF5FeatureSink, device: str, upsample: UpsampleOptions, rule: OutputSize,
                     options: JobOptions, split: Split) -> int:
    """``naf upsample lr.h5``: the features of an extract file, upsampled without a backbone pass."""
    from naf_cli.datasets import source_image_path
    from naf_cli.features import FeatureFile
    from naf_cli.pipeline import ImageSource, InputItem, UpsampleFeatures
    from naf_cli.pipeline.memory import parse_bytes
    from naf_cli.pipeline.transforms import UpsampleStored
    from naf_cli.upsamplers import load_upsampler

    stored = FeatureFile(path)
    if not len(stored):
        raise OptionError(f"{path} holds no features; fix: pass a file written by naf extract")
    items = [InputItem(name, source_image_path(stored, name, upsample.image_root)) for name in stored]
    source = ImageSource.of(items, upsample.image_root or Path(str(stored.attrs.get("source_root", path.parent))))
    upsampler, info = load_upsampler(upsample.upsampler, upsample.checkpoint, device)
    upsampler.check_channels(int(stored.dataset(stored.names[0]).shape[0]))
    transform = UpsampleStored(stored, UpsampleFeatures(upsampler, info, rule, parse_bytes(upsample.max_memory)))
    description = f"{path.name} + {info.name} ({rule.describe()})"
    return _run(source, transform, sink, options, description, split)


def _run(source: ImageSource, transform: Transform, sink: HDF5FeatureSink, options: JobOptions, description: str,
         split: Split) -> int:
    from naf_cli.cli.progress import PartProgress, make_progress
    from naf_cli.pipeline.progress import SilentProgress
    from naf_cli.pipeline.run import run_pipeline

    partition = split.partition
    if split.rank is not None:
        _start_ranks(split.rank, source, transform, sink, options)
    progress: Progress = make_progress() if split.rank is None or split.rank.rank == 0 else SilentProgress()
    if not partition.is_whole:
        progress = PartProgress(progress, f"part {partition.label}")
    summary = run_pipeline(source, transform, sink, progress, options.strict, {"command": command_line()},
                           description, options.workers, options.batch_size, partition)
    if split.rank is None or split.rank.rank == 0:
        _print_summary(summary)
    resumed = f" ({summary.resumed} done by an earlier run)" if summary.resumed else ""
    part = "" if partition.is_whole else f"part {partition.label}: "
    print(f"{part}wrote {summary.done} image(s) to {summary.output}{resumed}")
    status = summary.status
    if not partition.is_whole and status is not None:
        if status.complete:
            print(f"{summary.output} is complete: all {status.parts_total} parts finished")
        else:
            print(f"{summary.output}: {len(status.parts_finished)} of {status.parts_total} parts finished; waiting for "
                  f"{', '.join(status.pending_parts) or '-'} (the run is complete when every part has finished, into "
                  f"this output, or into their own outputs joined with naf merge)")
        if status.problem:
            print(f"warning: {summary.output} cannot be complete: {status.problem}", file=sys.stderr)
    if summary.skipped:
        print(f"warning: {len(summary.skipped)} of {summary.total} input(s) skipped (named above, and in the "
              f"file's skipped_images and skipped_reasons attributes)", file=sys.stderr)
        return EXIT_SKIPPED
    return EXIT_OK


def _start_ranks(rank: TorchrunRank, source: ImageSource, transform: Transform, sink: HDF5FeatureSink,
                 options: JobOptions) -> None:
    """torchrun: check that every rank runs the same job, and let rank 0 alone apply --overwrite."""
    from naf_cli.pipeline.distributed import start_together
    from naf_cli.pipeline.run import run_settings
    from naf_cli.pipeline.shard_catalog import inputs_digest

    overwrite, sink.overwrite = sink.overwrite, False
    agreed = {"settings": sink.settings(run_settings(transform, options.batch_size)),
              "inputs": {"count": len(source), "sha256": inputs_digest(item.name for item in source)}}
    start_together(rank, str(transform.device), agreed, sink.output.absolute().parent,
                   lambda: sink.claim(rank.partition), sink.remove_previous if overwrite else lambda: None)


def _print_summary(summary: RunSummary) -> None:
    from rich.table import Table

    from naf_cli.cli.progress import stderr_console
    from naf_cli.pipeline.memory import gib

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    earlier = f" ({summary.resumed} done by an earlier run)" if summary.resumed else ""
    table.add_row("done", f"{summary.done} of {summary.total}{earlier}")
    table.add_row("skipped", str(len(summary.skipped)))
    rate = f" ({summary.images_per_second:.2f} images/s)" if summary.done else " (nothing left to compute)"
    table.add_row("time", f"{summary.seconds:.1f} s{rate}")
    table.add_row("model busy", f"{100 * summary.busy_fraction:.0f}% (compute {summary.compute_seconds:.1f} s; decode "
                                f"{summary.decode_seconds:.1f} s and write {summary.write_seconds:.1f} s overlapped)")
    table.add_row("peak memory", gib(summary.peak_memory_bytes))
    stderr_console().print(table)
