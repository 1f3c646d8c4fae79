"""One job of ``naf extract`` or ``naf upsample``, for the CLI and the library alike: a
``JobSpec`` checked, turned into source, transform and sink, and run.

Every check that can fail runs before the first image is read: options, paths, another run
on the output (its lock), and whether the largest output can fit in memory and on disk.
The CLI builds a ``JobSpec`` from its options; ``upsample_folder`` and ``extract_folder``
build one from their arguments, with models already loaded: both take this one path, so a
library user gets the same checks, decoding workers and batching.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    from naf_cli.pipeline.projection import GivenBasis
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
    checkpoint: str | None = "auto"
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
    """A job built: its source, transform and the progress line's words; for the size said
    before the run, each input's output shape (``output_shape(name)``, None when its header
    cannot be read) and what would make the output smaller; for ``--pca``, the features'
    ``channels``, how to get an input's low-resolution features (``low_res``) and the basis
    ``--pca-basis`` gives; ``notices``, e.g. which weights ``--checkpoint auto`` chose."""

    source: ImageSource
    transform: Transform
    description: str
    output_shape: Callable[[str], Shape | None]
    smaller: list[str]
    channels: int = 0
    low_res: Callable[[str], torch.Tensor | None] | None = None
    given_basis: GivenBasis | None = None
    notices: tuple[str, ...] = ()  # said once the run has started (after every check that may refuse it)


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
        pipeline = _build(spec, split, rule, limit, models)
        # 3. before any work, and before a --pca fit: what the run writes, and whether it fits
        _say_size(spec, split, pipeline, reporter)
        if upsample is not None and (upsample.pca is not None or upsample.pca_basis is not None):
            pipeline = _project(spec, pipeline, reporter)
        return _run(spec, split, pipeline, sink, reporter)
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


def _build(spec: JobSpec, split: Split, rule: OutputSize | None, limit: int | None, models: LoadedModels | None) -> Pipeline:
    """The job's pipeline, models loaded (unless given) and checked (``--pca`` is applied later, by ``_project``)."""
    from naf_cli.backbones import get_spec, load_backbone
    from naf_cli.devices import resolve_device
    from naf_cli.pipeline.distributed import rank_device
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
        return _upsample_stored(spec, stored_path, device, rule, limit, models)
    source = ImageSource(list(spec.inputs), list(spec.globs), spec.files_from)
    if not len(source):
        where = ", ".join(map(str, spec.inputs)) or str(spec.files_from)
        raise OptionError(f"no images found in {where}; fix: pass a folder with .jpg/.png/... files, or check --glob")
    # 2. models, and what they imply for the output
    name = models.backbone.info.name if models else get_spec(spec.vfm).name
    checkpoint, notices = _weights(upsample, models, name) if upsample is not None else (None, ())
    paths = {item.name: item.path for item in source}
    backbone = models.backbone if models else load_backbone(name, spec.vfm_weights, device, spec.layer, spec.backbone_precision)
    channels, patch = backbone.info.channels, backbone.info.patch_size
    extract = ExtractFeatures(backbone, spec.long_side)

    def grid(name: str, image_hw: tuple[int, int]) -> tuple[int, int]:
        in_hw = backbone_input_size(image_hw, patch, spec.long_side)
        return in_hw[0] // patch, in_hw[1] // patch

    if upsample is None or rule is None:
        smaller = ["--out-dtype float16"] if spec.out_dtype == "float32" else []
        return Pipeline(source, extract, f"{name} features", _output_shapes(paths, grid, None, channels, True),
                        [*smaller, "a smaller --long-side"])
    upsampler, info = _upsampler(upsample, checkpoint, models, device)
    upsampler.check_channels(channels)
    _check_memory(spec, upsampler, channels, patch, rule, limit, device)
    transform = ExtractAndUpsample(extract, UpsampleFeatures(upsampler, info, rule, limit))
    given = _given_basis(upsample, channels, transform.file_attrs())
    return Pipeline(source, transform, f"{name} + {info.name} ({rule.describe()})",
                    _output_shapes(paths, grid, rule, _stored_channels(upsample, given, channels), True),
                    _smaller_upsampled(spec, channels), channels, lambda n: _image_features(extract, paths[n]), given, notices)


def _output_shapes(paths: Mapping[str, Path], grid: Callable[[str, tuple[int, int]], tuple[int, int] | None],
                   rule: OutputSize | None, channels: int, needs_header: bool) -> Callable[[str], Shape | None]:
    """Each input's stored [C, H, W]: its feature ``grid`` (from its name and its photo's size),
    upsampled by ``rule`` (None: stored as it is). The photo's header is read only when needed."""
    from naf_cli.images import header_size

    def shape(name: str) -> Shape | None:
        image_hw = header_size(paths[name]) if needs_header else (0, 0)
        cells = None if image_hw is None else grid(name, image_hw)
        if image_hw is None or cells is None:
            return None
        return (channels, *(cells if rule is None else rule.resolve(image_hw, cells)))

    return shape


def _stored_channels(upsample: UpsampleSpec, given: GivenBasis | None, channels: int) -> int:
    """Channels each stored map has: ``--pca``'s (checked against the features'), else all of them."""
    from naf_cli.pipeline.projection import check_components

    if given is not None:
        return given.basis.count
    if upsample.pca is not None:
        check_components(upsample.pca, channels)
    return upsample.pca or channels


def _given_basis(upsample: UpsampleSpec, channels: int, features: Mapping[str, object]) -> GivenBasis | None:
    """``--pca-basis``'s basis, checked against these features and ``--pca``, or None."""
    from naf_cli.pipeline.projection import GivenBasis

    if upsample.pca_basis is None:
        return None
    given = GivenBasis.read(upsample.pca_basis, channels, features)
    if upsample.pca is not None and upsample.pca != given.basis.count:
        raise OptionError(f"--pca {upsample.pca} but the basis of {upsample.pca_basis} has {given.basis.count} components; "
                          f"fix: drop --pca (it follows --pca-basis) or pass --pca {given.basis.count}")
    return given


def _image_features(extract: ExtractFeatures, path: Path) -> torch.Tensor | None:
    """The backbone's features of one photo, None when it cannot be used (the run says why)."""
    from naf_cli.errors import ImageReadError, InputSkipped
    from naf_cli.images import read_image

    try:
        return extract(read_image(path)[0]).features.tensor()
    except (ImageReadError, InputSkipped):
        return None


def _project(spec: JobSpec, pipeline: Pipeline, progress: Progress) -> Pipeline:
    """The pipeline with its features stored as ``--pca`` components: the basis of ``--pca-basis``,
    the one the run being resumed holds, or one fitted now (after the size was said)."""
    from dataclasses import replace

    from naf_cli.pipeline.hdf5.layout import shard_folder
    from naf_cli.pipeline.projection import ProjectedFeatures, check_resumable, fit_run_basis, fit_setting, stored_run_basis

    upsample = spec.upsample
    assert upsample is not None and pipeline.low_res is not None
    folder = shard_folder(spec.output)
    if pipeline.given_basis is not None:
        given = pipeline.given_basis
        basis, used, fit, where = given.basis, given.fit_images, given.fit, f"taken from {given.path}"
    else:
        assert upsample.pca is not None
        fit = fit_setting(upsample.pca_fit)
        found = None if spec.overwrite else stored_run_basis(folder, upsample.pca, fit)
        if found is not None:
            (basis, used), where = found, f"the basis of the run being resumed in {folder}"
        else:
            if not spec.overwrite:
                check_resumable(spec.output, folder, upsample.pca, fit)
            names = [item.name for item in pipeline.source]
            basis, used = fit_run_basis(names, pipeline.low_res, upsample.pca, pipeline.channels, fit, progress)
            where = f"fitted on {used} image(s)"
    progress.warn(f"pca: {basis.count} of {pipeline.channels} channels keep {100 * basis.explained:.1f}% of the variance of "
                  f"the low-resolution features ({where}; basis sha256 {basis.sha256[:12]})")
    taken_from = pipeline.given_basis.path if pipeline.given_basis else None
    return replace(pipeline, transform=ProjectedFeatures(pipeline.transform, basis, fit, used, taken_from))


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
            "naf extract (low resolution) with naf_cli.datasets.UpsamplingDataset to upsample when read"]


def _weights(upsample: UpsampleSpec, models: LoadedModels | None, backbone: str) -> tuple[str | None, tuple[str, ...]]:
    """The checkpoint ``upsample`` names, ``--checkpoint auto`` resolved for ``backbone`` (and
    fetched: before any backbone loads), and the choice as a notice; nothing when the caller
    gave its upsampler."""
    from naf_cli.checkpoint_choice import resolve_auto

    if models is not None and models.upsampler is not None:
        return None, ()
    checkpoint, choice = resolve_auto(upsample.checkpoint, backbone, upsample.upsampler)
    return checkpoint, (choice.line(),) if choice else ()


def _upsampler(upsample: UpsampleSpec, checkpoint: str | None, models: LoadedModels | None,
               device: str) -> tuple[Upsampler, UpsamplerInfo]:
    """The caller's upsampler when it gave one, else the one ``upsample`` names, loaded with ``checkpoint``."""
    from naf_cli.upsamplers import UpsamplerInfo, load_upsampler

    if models is not None and models.upsampler is not None:
        return models.upsampler, models.upsampler_info or UpsamplerInfo(type(models.upsampler).__name__.lower())
    return load_upsampler(upsample.upsampler, checkpoint, device)


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


def _upsample_stored(spec: JobSpec, path: Path, device: str, rule: OutputSize, limit: int | None,
                     models: LoadedModels | None) -> Pipeline:
    """``naf upsample lr.h5``: the features of an extract file, upsampled without a backbone pass."""
    import torch

    from naf_cli.datasets import source_image_path
    from naf_cli.errors import NafError
    from naf_cli.features import FeatureFile
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
    checkpoint, notices = _weights(upsample, models, str(stored.attrs.get("backbone", "")))
    upsampler, info = _upsampler(upsample, checkpoint, models, device)
    channels = int(stored.dataset(stored.names[0]).shape[0])
    upsampler.check_channels(channels)
    transform = UpsampleStored(stored, UpsampleFeatures(upsampler, info, rule, limit))

    def low_res(name: str) -> torch.Tensor | None:
        try:
            return torch.from_numpy(stored[name]).float()
        except NafError:  # unreadable: the run skips it with its reason
            return None

    def grid(name: str, image_hw: tuple[int, int]) -> tuple[int, int] | None:
        try:
            shape = stored.dataset(name).shape
        except (NafError, KeyError):
            return None
        return int(shape[-2]), int(shape[-1])

    given = _given_basis(upsample, channels, transform.file_attrs())
    return Pipeline(source, transform, f"{path.name} + {info.name} ({rule.describe()})",
                    _output_shapes(paths, grid, rule, _stored_channels(upsample, given, channels), rule.mode == "image"),
                    _smaller_upsampled(spec, channels), channels, low_res, given, notices)


def _run(spec: JobSpec, split: Split, pipeline: Pipeline, sink: HDF5FeatureSink, reporter: Progress) -> RunSummary:
    from naf_cli.pipeline.run import run_pipeline

    source, transform = pipeline.source, pipeline.transform
    if split.rank is not None:
        _start_ranks(split.rank, source, transform, sink, spec.batch_size)
    run_attrs = {"command": spec.command} if spec.command else None
    return run_pipeline(source, transform, sink, reporter, strict=spec.strict, run_attrs=run_attrs,
                        description=pipeline.description, workers=spec.workers, batch_size=spec.batch_size,
                        partition=split.partition, notices=pipeline.notices)


def _say_size(spec: JobSpec, split: Split, pipeline: Pipeline, reporter: Progress) -> None:
    """One line before the first image: about how much is left to write and the free space; a
    run that cannot fit on its disk is refused here, before any work. A ``--shard`` part counts
    its own share; torchrun's ranks count the whole run, so every rank decides alike (a rank
    refusing alone would leave the others waiting at the start)."""
    from naf_cli.pipeline.run_size import check_fits, estimate, finished_names, free_bytes, output_bytes

    items = pipeline.source.items
    share = split.partition if split.rank is None else Partition()
    mine = [item.name for start in share.group_starts(len(items), spec.batch_size)
            for item in items[start:start + spec.batch_size]]
    done = set() if spec.overwrite else finished_names(spec.output)
    size = estimate([item.name for item in items], pipeline.output_shape, sum(name not in done for name in mine),
                    spec.out_dtype, compressed=spec.compression != "none")
    if size is None or not size.images:
        return
    free, folder = free_bytes(spec.output)
    if spec.overwrite:
        free += output_bytes(spec.output)  # the run it replaces is deleted first
    check_fits(size, free, folder, pipeline.smaller, reporter.warn)
    reporter.warn(size.line(free, folder))


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
