"""One job of ``naf extract`` or ``naf upsample``, for the CLI and the library alike: a
``JobSpec`` checked, turned into source, transform and sink, and run.

Every check that can fail runs before the first image is read: options, paths, another run
on the output (its lock), and whether the largest output can fit in memory and on disk.
The CLI builds a ``JobSpec`` from its options; ``upsample_folder`` and ``extract_folder``
build one from their arguments, with models already loaded: both take this one path, so a
library user gets the same checks, decoding workers and batching.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from naf_cli.defaults import DEFAULT_VFM
from naf_cli.errors import OptionError
from naf_cli.pipeline.distributed import TorchrunRank, torchrun_rank
from naf_cli.pipeline.partition import Partition
from naf_cli.pipeline.progress import PartProgress, SilentProgress
from naf_cli.pipeline.seams import Progress, Transform

Shape = tuple[int, int, int]

if TYPE_CHECKING:
    import torch

    from naf_cli.backbones import Backbone
    from naf_cli.modeling import Upsampler
    from naf_cli.pipeline.hdf5.sink import HDF5FeatureSink
    from naf_cli.pipeline.projection import ProjectedFeatures
    from naf_cli.pipeline.run import RunSummary
    from naf_cli.pipeline.sizes import OutputSize
    from naf_cli.pipeline.sources import ImageSource
    from naf_cli.pipeline.transforms import ExtractFeatures
    from naf_cli.upsamplers import UpsamplerInfo


@dataclass(frozen=True, kw_only=True)
class UpsampleSpec:
    """What ``naf upsample`` adds to a job: the upsampler and the output size.

    ``output_size``: ``grid`` (the feature grid times ``scale``, default 16), ``image`` or
    ``HxW``. ``image_root``: with an extract file as input, the photos' folder.
    ``max_memory``: what one forward may use (``8G``); larger NAF outputs go in bands.
    ``pca``: store K principal components of the features (``naf_cli.pipeline.projection``),
    the basis fitted on ``pca_fit`` of the inputs (None: all of them, up to 256), or taken from
    the ``--pca`` output ``pca_basis``.
    """

    upsampler: str = "naf"
    checkpoint: str | None = None
    output_size: str = "grid"
    scale: float | None = None
    image_root: Path | None = None
    max_memory: str | None = None
    pca: int | None = None
    pca_fit: int | None = None
    pca_basis: Path | None = None


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
class Pipeline:
    """A job built: its source, transform, the progress line's words, and for the size said
    before the run, each input's output shape (None when its header cannot be read) and what
    would make the output smaller."""

    source: ImageSource
    transform: Transform
    description: str
    output_shape: Callable[[str], Shape | None]
    smaller: list[str]


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
    from naf_cli.pipeline.projection import check_pca
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
    if upsample is not None:
        check_pca(upsample.pca, upsample.pca_fit, upsample.pca_basis)
    limit = parse_bytes(upsample.max_memory) if upsample else None
    rule = OutputSize.parse(upsample.output_size, upsample.scale) if upsample else None
    if models is None:
        get_spec(spec.vfm)
        if upsample is not None:
            get_factory(upsample.upsampler)
    sink = HDF5FeatureSink(spec.output, spec.overwrite, spec.out_dtype, spec.compression, spec.shard_images)
    if split.rank is None:
        sink.claim(split.partition)  # another live run on this output is refused before anything loads (torchrun: at the start check)
    reporter = _reporter(split, progress)
    try:
        return _run(spec, split, _build(spec, split, rule, limit, models, reporter), sink, reporter)
    finally:
        sink.release()


def _reporter(split: Split, progress: Progress | None) -> Progress:
    """Who hears of the run: ``progress`` (default tqdm), torchrun's rank 0 only, each line
    marked with its part for ``--shard``."""
    from naf_cli.pipeline.progress import TqdmProgress

    reporter: Progress = (progress or TqdmProgress()) if split.reports else SilentProgress()
    if not split.partition.is_whole:
        reporter = PartProgress(reporter, f"part {split.partition.label}")
    return reporter


def _build(spec: JobSpec, split: Split, rule: OutputSize | None, limit: int | None, models: LoadedModels | None,
           progress: Progress) -> Pipeline:
    """The job's pipeline, models loaded (unless given) and checked, ``--pca``'s basis fitted."""
    from naf_cli.backbones import get_spec, load_backbone
    from naf_cli.devices import resolve_device
    from naf_cli.images import header_size
    from naf_cli.pipeline.distributed import rank_device
    from naf_cli.pipeline.projection import ProjectedFeatures
    from naf_cli.pipeline.sizes import backbone_input_size
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
        return _upsample_stored(spec, stored_path, device, rule, limit, models, progress)
    source = ImageSource(list(spec.inputs), list(spec.globs), spec.files_from)
    if not len(source):
        where = ", ".join(map(str, spec.inputs)) or str(spec.files_from)
        raise OptionError(f"no images found in {where}; fix: pass a folder with .jpg/.png/... files, or check --glob")
    # 2. models, and what they imply for the output
    name = models.backbone.info.name if models else get_spec(spec.vfm).name
    paths = {item.name: item.path for item in source}
    if upsample is not None and rule is not None:
        upsampler, info = _upsampler(upsample, models, device)
        backbone = models.backbone if models else load_backbone(name, spec.vfm_weights, device, spec.layer, spec.backbone_precision)
        channels, patch = backbone.info.channels, backbone.info.patch_size
        upsampler.check_channels(channels)
        _check_memory(spec, upsampler, channels, patch, rule, limit, device)
        extract = ExtractFeatures(backbone, spec.long_side)
        transform: Transform = ExtractAndUpsample(extract, UpsampleFeatures(upsampler, info, rule, limit))
        if upsample.pca is not None or upsample.pca_basis is not None:
            transform = _projected(spec, transform, [item.name for item in source], lambda n: _image_features(extract, paths[n]),
                                   channels, progress)
        kept = transform.basis.count if isinstance(transform, ProjectedFeatures) else channels

        def upsampled_shape(name: str) -> Shape | None:
            image_hw = header_size(paths[name])
            if image_hw is None:
                return None
            in_hw = backbone_input_size(image_hw, patch, spec.long_side)
            return (kept, *rule.resolve(image_hw, (in_hw[0] // patch, in_hw[1] // patch)))

        return Pipeline(source, transform, f"{name} + {info.name} ({rule.describe()})", upsampled_shape,
                        _smaller_upsampled(spec, channels))
    backbone = models.backbone if models else load_backbone(name, spec.vfm_weights, device, spec.layer, spec.backbone_precision)
    channels, patch = backbone.info.channels, backbone.info.patch_size

    def extracted_shape(name: str) -> Shape | None:
        image_hw = header_size(paths[name])
        if image_hw is None:
            return None
        in_hw = backbone_input_size(image_hw, patch, spec.long_side)
        return channels, in_hw[0] // patch, in_hw[1] // patch

    smaller = ["--out-dtype float16"] if spec.out_dtype == "float32" else []
    return Pipeline(source, ExtractFeatures(backbone, spec.long_side), f"{name} features", extracted_shape,
                    [*smaller, "a smaller --long-side"])


def _image_features(extract: ExtractFeatures, path: Path) -> torch.Tensor | None:
    """The backbone's features of one photo, None when it cannot be used (the run says why)."""
    from naf_cli.errors import ImageReadError, InputSkipped
    from naf_cli.images import read_image

    try:
        return extract(read_image(path)[0]).features.tensor()
    except (ImageReadError, InputSkipped):
        return None


def _projected(spec: JobSpec, transform: Transform, names: list[str], low_res: Callable[[str], torch.Tensor | None],
               channels: int, progress: Progress) -> ProjectedFeatures:
    """``transform`` with its features stored as ``--pca`` components: the basis of ``--pca-basis``,
    the one a resumed run's folder holds, or one fitted now."""
    from naf_cli.pipeline.hdf5.layout import shard_folder
    from naf_cli.pipeline.projection import ProjectedFeatures, basis_from_file, fit_count, fit_run_basis, stored_run_basis

    upsample = spec.upsample
    assert upsample is not None
    fit = fit_count(upsample.pca_fit, len(names))
    found = None
    if upsample.pca_basis is not None:
        basis, used, fit = basis_from_file(upsample.pca_basis, channels)
        if upsample.pca is not None and upsample.pca != basis.count:
            raise OptionError(f"--pca {upsample.pca} but the basis of {upsample.pca_basis} has {basis.count} components; "
                              f"fix: drop --pca (it follows --pca-basis) or pass --pca {basis.count}")
        where = f"taken from {upsample.pca_basis}"
    elif not spec.overwrite and upsample.pca is not None and (found := stored_run_basis(shard_folder(spec.output), upsample.pca, fit)):
        basis, used = found
        where = f"the basis of the run being resumed in {shard_folder(spec.output)}"
    else:
        assert upsample.pca is not None
        basis, used = fit_run_basis(names, low_res, upsample.pca, channels, fit, progress)
        where = f"fitted on {used} image(s)"
    progress.warn(f"pca: {basis.count} of {channels} channels keep {100 * basis.explained:.1f}% of the variance of the "
                  f"low-resolution features ({where}; basis sha256 {basis.sha256[:12]})")
    return ProjectedFeatures(transform, basis, fit, used)


def _smaller_upsampled(spec: JobSpec, channels: int) -> list[str]:
    """What would make an upsampled output smaller, for the refusal of a run too big for its disk."""
    upsample = spec.upsample
    assert upsample is not None
    fixes = []
    if upsample.pca is None and channels > 32:
        fixes.append(f"--pca 32 (32 of the {channels} channels)")
    elif upsample.pca is not None and upsample.pca > 8:
        fixes.append("fewer --pca components")
    if spec.out_dtype == "float32":
        fixes.append("--out-dtype float16")
    return [*fixes, "a smaller --scale or --output-size",
            "naf extract (low resolution) with naf_cli.UpsamplingDataset to upsample when read"]


def _upsampler(upsample: UpsampleSpec, models: LoadedModels | None, device: str) -> tuple[Upsampler, UpsamplerInfo]:
    """The caller's upsampler when it gave one, else the one ``upsample`` names, loaded."""
    from naf_cli.upsamplers import UpsamplerInfo, load_upsampler

    if models is not None and models.upsampler is not None:
        return models.upsampler, models.upsampler_info or UpsamplerInfo(type(models.upsampler).__name__.lower())
    return load_upsampler(upsample.upsampler, upsample.checkpoint, device)


def _check_memory(spec: JobSpec, upsampler: Upsampler, channels: int, patch_size: int, rule: OutputSize, limit: int | None,
                  device: str) -> None:
    """Refuse only what can never work: the least the largest output needs in memory (band by
    band where the upsampler can, guided by the smallest image)."""

    import torch

    from naf_cli.pipeline.memory import available_bytes, gib

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


def _upsample_stored(spec: JobSpec, path: Path, device: str, rule: OutputSize, limit: int | None, models: LoadedModels | None,
                     progress: Progress) -> Pipeline:
    """``naf upsample lr.h5``: the features of an extract file, upsampled without a backbone pass."""
    import torch

    from naf_cli.datasets import source_image_path
    from naf_cli.errors import NafError
    from naf_cli.features import FeatureFile
    from naf_cli.images import header_size
    from naf_cli.pipeline.projection import ProjectedFeatures
    from naf_cli.pipeline.sources import ImageSource, InputItem
    from naf_cli.pipeline.transforms import UpsampleFeatures, UpsampleStored

    upsample = spec.upsample
    assert upsample is not None
    stored = FeatureFile(path)
    if not len(stored):
        raise OptionError(f"{path} holds no features; fix: pass a file written by naf extract")
    items = [InputItem(name, source_image_path(stored, name, upsample.image_root)) for name in stored]
    source = ImageSource.of(items, upsample.image_root or Path(str(stored.attrs.get("source_root", path.parent))))
    paths = {item.name: item.path for item in source}
    upsampler, info = _upsampler(upsample, models, device)
    channels = int(stored.dataset(stored.names[0]).shape[0])
    upsampler.check_channels(channels)
    transform: Transform = UpsampleStored(stored, UpsampleFeatures(upsampler, info, rule, limit))

    def low_res(name: str) -> torch.Tensor | None:
        try:
            return torch.from_numpy(stored[name]).float()
        except NafError:  # unreadable: the run skips it with its reason
            return None

    if upsample.pca is not None or upsample.pca_basis is not None:
        transform = _projected(spec, transform, [item.name for item in source], low_res, channels, progress)
    kept = transform.basis.count if isinstance(transform, ProjectedFeatures) else channels

    def upsampled_shape(name: str) -> Shape | None:
        try:
            grid = tuple(int(v) for v in stored.dataset(name).shape[-2:])
        except (NafError, KeyError):
            return None
        image_hw = header_size(paths[name]) if rule.mode == "image" else (0, 0)
        return None if image_hw is None else (kept, *rule.resolve(image_hw, (grid[0], grid[1])))

    return Pipeline(source, transform, f"{path.name} + {info.name} ({rule.describe()})", upsampled_shape,
                    _smaller_upsampled(spec, channels))


def _run(spec: JobSpec, split: Split, pipeline: Pipeline, sink: HDF5FeatureSink, reporter: Progress) -> RunSummary:
    from naf_cli.pipeline.run import run_pipeline

    partition = split.partition
    source, transform = pipeline.source, pipeline.transform
    if split.rank is not None:
        _start_ranks(split.rank, source, transform, sink, spec.batch_size)
    _say_size(spec, split, pipeline, reporter)
    run_attrs = {"command": spec.command} if spec.command else None
    return run_pipeline(source, transform, sink, reporter, strict=spec.strict, run_attrs=run_attrs,
                        description=pipeline.description, workers=spec.workers, batch_size=spec.batch_size,
                        partition=partition)


def _say_size(spec: JobSpec, split: Split, pipeline: Pipeline, reporter: Progress) -> None:
    """One line before the first image: about how much the run writes, and the free space; a
    run that cannot fit on its disk is refused here, before any work."""
    from naf_cli.pipeline.run_size import check_fits, estimate, free_bytes

    total = len(pipeline.source)
    mine = sum(min(spec.batch_size, total - start) for start in split.partition.group_starts(total, spec.batch_size))
    left = max(0, mine - (0 if spec.overwrite else _images_in(spec.output)))
    size = estimate([item.name for item in pipeline.source], pipeline.output_shape, left, spec.out_dtype,
                    compressed=spec.compression != "none")
    if size is None or not size.images:
        return
    free, folder = free_bytes(spec.output)
    check_fits(size, free, folder, pipeline.smaller)
    reporter.warn(size.line(free, folder))


def _images_in(output: Path) -> int:
    """Images an existing output already holds (all parts'), 0 when there is none."""
    from naf_cli.errors import NafError
    from naf_cli.features import FeatureFile

    if not output.is_file():
        return 0
    try:
        with FeatureFile(output) as existing:
            return len(existing) - len(existing.unreadable)
    except (NafError, OSError):
        return 0


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
