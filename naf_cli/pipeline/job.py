"""One job of ``naf extract`` or ``naf upsample``, for the CLI and the library alike: a
``JobSpec`` checked, turned into source, transform and sink, and run.

Every check that can fail runs before the first image is read: options, paths, another run
on the output (its lock), and whether the largest output can fit in memory and on disk.
The CLI builds a ``JobSpec`` from its options; ``upsample_folder`` and ``extract_folder``
build one from their arguments, with models already loaded: both take this one path, so a
library user gets the same checks, decoding workers and batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from naf_cli.defaults import DEFAULT_VFM
from naf_cli.errors import OptionError
from naf_cli.pipeline.distributed import TorchrunRank, torchrun_rank
from naf_cli.pipeline.partition import Partition
from naf_cli.pipeline.progress import PartProgress, SilentProgress
from naf_cli.pipeline.seams import Progress, Transform

if TYPE_CHECKING:
    from naf_cli.backbones import Backbone
    from naf_cli.modeling import Upsampler
    from naf_cli.pipeline.hdf5.sink import HDF5FeatureSink
    from naf_cli.pipeline.run import RunSummary
    from naf_cli.pipeline.sizes import OutputSize
    from naf_cli.pipeline.sources import ImageSource
    from naf_cli.upsamplers import UpsamplerInfo


@dataclass(frozen=True, kw_only=True)
class UpsampleSpec:
    """What ``naf upsample`` adds to a job: the upsampler and the output size.

    ``output_size``: ``grid`` (the feature grid times ``scale``, default 16), ``image`` or
    ``HxW``. ``image_root``: with an extract file as input, the photos' folder.
    ``max_memory``: what one forward may use (``8G``); larger NAF outputs go in bands.
    """

    upsampler: str = "naf"
    checkpoint: str | None = None
    output_size: str = "grid"
    scale: float | None = None
    image_root: Path | None = None
    max_memory: str | None = None


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One run over a set of images into one HDF5 output; ``upsample`` None extracts.

    The fields are the commands' options (``naf upsample --help``); ``command`` is recorded in
    the output's attributes.
    """

    inputs: Sequence[Path]
    output: Path
    upsample: UpsampleSpec | None = None
    vfm: str = DEFAULT_VFM
    vfm_weights: Path | None = None
    layer: int | None = None
    backbone_precision: str = "fp32"
    long_side: int = 448
    globs: Sequence[str] = ()
    files_from: Path | None = None
    strict: bool = False
    device: str = "auto"
    overwrite: bool = False
    out_dtype: str = "float16"
    compression: str = "none"
    shard_images: int | None = None
    workers: int | None = None
    batch_size: int = 1
    shard: str | None = None
    torchrun: bool = True  # started by torchrun: split the inputs over its ranks (the library's wrappers do not)
    command: str = ""


@dataclass(frozen=True)
class LoadedModels:
    """Models a library caller already has: the job uses them (and their device) instead of
    loading by name. ``upsampler_info`` None: named after the upsampler's class."""

    backbone: Backbone
    upsampler: Upsampler | None = None
    upsampler_info: UpsamplerInfo | None = None

    @property
    def device(self) -> str:
        from naf_cli.pipeline.transforms import model_device

        return str(model_device(self.backbone))


@dataclass(frozen=True)
class Split:
    """Which part of the run this process does: ``--shard I/N``, a torchrun rank, or all of it."""

    partition: Partition = field(default_factory=Partition)
    rank: TorchrunRank | None = None

    @classmethod
    def of(cls, spec: JobSpec) -> Split:
        rank = torchrun_rank() if spec.torchrun else None
        if spec.shard is None:
            return cls(rank.partition if rank else Partition(), rank)
        if rank is not None:
            raise OptionError("--shard and torchrun both split the run; fix: drop --shard under torchrun (its ranks split the inputs)")
        partition = Partition.parse(spec.shard)
        if spec.overwrite and not partition.is_whole:
            raise OptionError(f"--overwrite with --shard {spec.shard} would delete the other parts' work; fix: delete "
                              f"{spec.output} and {spec.output}.shards before starting the parts")
        return cls(partition)

    @property
    def reports(self) -> bool:
        """Whether this process shows progress and the summary (torchrun: rank 0 only)."""
        return self.rank is None or self.rank.rank == 0


def feature_file_input(inputs: Sequence[Path]) -> Path | None:
    """The extract file when the only input is an HDF5 file, else None."""
    if len(inputs) != 1 or not inputs[0].is_file() or inputs[0].suffix.lower() not in (".h5", ".hdf5", ".hdf"):
        return None
    return Path(inputs[0])


def run_job(spec: JobSpec, progress: Progress | None = None, models: LoadedModels | None = None) -> RunSummary:
    """Check ``spec``, build the pipeline and run it; returns the summary (``summary.skipped``
    lists the inputs that could not be used). ``progress``: the reporter (default: tqdm)."""
    from naf_cli.backbones import get_spec
    from naf_cli.pipeline.hdf5.sink import HDF5FeatureSink
    from naf_cli.pipeline.memory import parse_bytes
    from naf_cli.pipeline.run import check_batch_size
    from naf_cli.pipeline.sizes import OutputSize, check_positive
    from naf_cli.upsamplers import get_factory

    upsample = spec.upsample
    # 1. options and paths: nothing loaded, nothing written
    split = Split.of(spec)
    check_positive("--long-side", spec.long_side)
    check_batch_size(spec.batch_size)
    if spec.workers is not None and spec.workers < 0:
        raise OptionError(f"--workers must be 0 or more, got {spec.workers}; fix: e.g. --workers 2, or 0 to decode "
                          f"in the main process")
    limit = parse_bytes(upsample.max_memory) if upsample else None
    rule = OutputSize.parse(upsample.output_size, upsample.scale) if upsample else None
    if models is None:
        get_spec(spec.vfm)
        if upsample is not None:
            get_factory(upsample.upsampler)
    sink = HDF5FeatureSink(spec.output, spec.overwrite, spec.out_dtype, spec.compression, spec.shard_images)
    if split.rank is None:
        sink.claim(split.partition)  # another live run on this output is refused before anything loads (torchrun: at the start check)
    try:
        source, transform, description = _build(spec, split, sink, rule, limit, models)
        return _run(spec, split, source, transform, sink, description, progress)
    finally:
        sink.release()


def _build(spec: JobSpec, split: Split, sink: HDF5FeatureSink, rule: OutputSize | None, limit: int | None,
           models: LoadedModels | None) -> tuple[ImageSource, Transform, str]:
    """Source, transform and the progress line's description, models loaded (unless given) and checked."""
    from naf_cli.backbones import get_spec, load_backbone
    from naf_cli.devices import resolve_device
    from naf_cli.pipeline.distributed import rank_device
    from naf_cli.pipeline.sources import ImageSource
    from naf_cli.pipeline.transforms import ExtractAndUpsample, ExtractFeatures, UpsampleFeatures

    upsample = spec.upsample
    if models is not None:
        device = models.device
    else:
        device = resolve_device(rank_device(spec.device, split.rank) if split.rank else spec.device)
    stored_path = feature_file_input(spec.inputs)
    if stored_path is not None:
        if upsample is None or rule is None:
            raise OptionError(f"{stored_path} is a feature file; fix: naf extract takes images (naf upsample takes an extract file)")
        return _upsample_stored(stored_path, device, upsample, rule, limit, models)
    source = ImageSource(list(spec.inputs), list(spec.globs), spec.files_from)
    if not len(source):
        where = ", ".join(map(str, spec.inputs)) or str(spec.files_from)
        raise OptionError(f"no images found in {where}; fix: pass a folder with .jpg/.png/... files, or check --glob")
    # 2. models, and what they imply for the output
    name = models.backbone.info.name if models else get_spec(spec.vfm).name
    if upsample is not None and rule is not None:
        upsampler, info = _upsampler(upsample, models, device)
        backbone = models.backbone if models else load_backbone(name, spec.vfm_weights, device, spec.layer, spec.backbone_precision)
        upsampler.check_channels(backbone.info.channels)
        _check_room(spec, upsampler, backbone.info.channels, backbone.info.patch_size, rule, limit, device)
        transform = ExtractAndUpsample(ExtractFeatures(backbone, spec.long_side), UpsampleFeatures(upsampler, info, rule, limit))
        return source, transform, f"{name} + {info.name} ({rule.describe()})"
    backbone = models.backbone if models else load_backbone(name, spec.vfm_weights, device, spec.layer, spec.backbone_precision)
    return source, ExtractFeatures(backbone, spec.long_side), f"{name} features"


def _upsampler(upsample: UpsampleSpec, models: LoadedModels | None, device: str) -> tuple[Upsampler, UpsamplerInfo]:
    """The caller's upsampler when it gave one, else the one ``upsample`` names, loaded."""
    from naf_cli.upsamplers import UpsamplerInfo, load_upsampler

    if models is not None and models.upsampler is not None:
        return models.upsampler, models.upsampler_info or UpsamplerInfo(type(models.upsampler).__name__.lower())
    return load_upsampler(upsample.upsampler, upsample.checkpoint, device)


def _check_room(spec: JobSpec, upsampler: Upsampler, channels: int, patch_size: int, rule: OutputSize, limit: int | None,
                device: str) -> None:
    """Refuse only what can never work: the least the largest output needs in memory (band by
    band where the upsampler can, guided by the smallest image) and its size on disk."""
    import shutil

    import torch

    from naf_cli.pipeline.memory import available_bytes, gib, human_bytes

    largest = rule.largest(patch_size, spec.long_side)
    if largest is None:
        return
    need = upsampler.banded_peak_bytes(channels, largest, guidance_size=(1, 1))
    have = available_bytes(torch.device(device))
    have = have if limit is None else min(have, limit)
    what = f"outputs up to {largest[0]}x{largest[1]} with {channels} channels ({rule.describe()})"
    fix = "fix: a smaller --scale, --output-size or --long-side"
    if need > have:
        raise OptionError(f"{what} need about {gib(need)} per image, more than the {gib(have)} available; {fix}")
    stored = channels * largest[0] * largest[1] * (2 if spec.out_dtype == "float16" else 4)
    folder = spec.output.absolute().parent
    free = shutil.disk_usage(folder).free if folder.exists() else stored
    if stored > free:
        # found before any work: exit 2, as for every option that cannot work
        raise OptionError(f"{what} take about {human_bytes(stored)} each on disk, more than the {human_bytes(free)} "
                          f"free on the disk of {folder}; fix: free disk space, -o on "
                          f"another disk, or a smaller --scale, --output-size or --long-side")


def _upsample_stored(path: Path, device: str, upsample: UpsampleSpec, rule: OutputSize, limit: int | None,
                     models: LoadedModels | None) -> tuple[ImageSource, Transform, str]:
    """``naf upsample lr.h5``: the features of an extract file, upsampled without a backbone pass."""
    from naf_cli.datasets import source_image_path
    from naf_cli.features import FeatureFile
    from naf_cli.pipeline.sources import ImageSource, InputItem
    from naf_cli.pipeline.transforms import UpsampleFeatures, UpsampleStored

    stored = FeatureFile(path)
    if not len(stored):
        raise OptionError(f"{path} holds no features; fix: pass a file written by naf extract")
    items = [InputItem(name, source_image_path(stored, name, upsample.image_root)) for name in stored]
    source = ImageSource.of(items, upsample.image_root or Path(str(stored.attrs.get("source_root", path.parent))))
    upsampler, info = _upsampler(upsample, models, device)
    upsampler.check_channels(int(stored.dataset(stored.names[0]).shape[0]))
    transform = UpsampleStored(stored, UpsampleFeatures(upsampler, info, rule, limit))
    return source, transform, f"{path.name} + {info.name} ({rule.describe()})"


def _run(spec: JobSpec, split: Split, source: ImageSource, transform: Transform, sink: HDF5FeatureSink, description: str,
         progress: Progress | None) -> RunSummary:
    from naf_cli.pipeline.progress import TqdmProgress
    from naf_cli.pipeline.run import run_pipeline

    partition = split.partition
    if split.rank is not None:
        _start_ranks(split.rank, source, transform, sink, spec.batch_size)
    reporter: Progress = (progress or TqdmProgress()) if split.reports else SilentProgress()
    if not partition.is_whole:
        reporter = PartProgress(reporter, f"part {partition.label}")
    run_attrs = {"command": spec.command} if spec.command else None
    return run_pipeline(source, transform, sink, reporter, strict=spec.strict, run_attrs=run_attrs, description=description,
                        workers=spec.workers, batch_size=spec.batch_size, partition=partition)


def _start_ranks(rank: TorchrunRank, source: ImageSource, transform: Transform, sink: HDF5FeatureSink, batch_size: int) -> None:
    """torchrun: check that every rank runs the same job, and let rank 0 alone apply --overwrite."""
    from naf_cli.pipeline.distributed import start_together
    from naf_cli.pipeline.hdf5.layout import inputs_digest
    from naf_cli.pipeline.resume import output_settings, remove_previous, run_settings

    overwrite, sink.overwrite = sink.overwrite, False
    settings = output_settings(run_settings(transform, batch_size), out_dtype=sink.dtype, compression=sink.compression)
    agreed = {"settings": settings, "inputs": {"count": len(source), "sha256": inputs_digest(item.name for item in source)}}
    start_together(rank, str(transform.device), agreed, sink.output.absolute().parent, lambda: sink.claim(rank.partition),
                   (lambda: remove_previous(sink.output, sink.shards)) if overwrite else lambda: None)
