"""``naf upsample --pca K``: upsampled features stored as K principal components.

The basis is fitted on the run's own low-resolution features (a seeded sample of its
inputs, the fitting ``naf pca`` uses) before any image is written, and applied to each
upsampled map as it is written. It depends only on the whole input list, the seed and the
models, so every torchrun rank and every ``--shard`` part fit the same basis on their own;
its SHA-256 is one of the run's settings, so they refuse to mix with a run whose basis
differs. A resumed run reads the basis its folder already holds (the fit is not redone, and
a resume on a machine whose arithmetic differs in the last bits still continues the run);
``--pca-basis FILE`` takes the basis of another output (parts on unlike machines).

Projecting after upsampling is what keeps the stored features equal to the projection of
an ordinary run's: NAF mixes each head's channels with that head's own attention weights,
so projecting the low-resolution features first would give other features.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from naf_cli.errors import NafError, OptionError
from naf_cli.images import DecodedImage
from naf_cli.pca.basis import fit_on
from naf_cli.pca.stored import PCA_GROUP, StoredBasis
from naf_cli.pipeline.feature_map import Bands, FeatureMap
from naf_cli.pipeline.seams import AttrValue, Progress, Result, Transform
from naf_cli.sampling import seeded_choice

PCA_SEED = 0
# images the basis is fitted on unless --pca-fit says otherwise, and vectors drawn in all
PCA_FIT_IMAGES = 256
PCA_SAMPLES = 65536
# a basis given with --pca-basis must come from features of the same backbone, weights and layer
SAME_FEATURES = ("backbone", "backbone_weights_sha256", "backbone_layer")


def check_pca(components: int | None, fit_images: int | None, basis_file: Path | None = None) -> None:
    if components is not None and components < 1:
        raise OptionError(f"--pca must be at least 1, got {components}; fix: e.g. --pca 32, or leave it out to keep every channel")
    if fit_images is not None and fit_images < 1:
        raise OptionError(f"--pca-fit must be at least 1, got {fit_images}; fix: e.g. --pca-fit 256, or leave it out")
    if fit_images is not None and basis_file is not None:
        raise OptionError(f"--pca-fit does not apply with --pca-basis (the basis of {basis_file} is used as it is); fix: "
                          f"drop one of them")
    if fit_images is not None and components is None:
        raise OptionError("--pca-fit applies to --pca; fix: add --pca K, or drop --pca-fit")


def check_components(components: int, channels: int) -> None:
    if components > channels:
        raise OptionError(f"--pca {components} asks for more components than the {channels} channels the features have; "
                          f"fix: --pca {min(32, channels)} (or leave --pca out to keep every channel)")


def fit_setting(requested: int | None) -> int:
    """The images a fit asks for, as the run records it: ``--pca-fit``, else ``PCA_FIT_IMAGES``
    (a run of fewer inputs fits on all of them; adding inputs later does not change the setting)."""
    return requested or PCA_FIT_IMAGES


def check_resumable(output: Path, folder: Path, components: int, fit: int) -> None:
    """Before a fit: an OptionError when the run in ``folder`` asked for another number of
    components or fitted images (the rerun would be refused after fitting, for nothing)."""
    from naf_cli.pipeline.resume import RunRecord

    try:
        record = RunRecord.read(folder)
    except NafError:
        return  # the sink says what is wrong with it
    if record is None or not record.run_id:
        return
    theirs = (record.settings.get("pca_components"), record.settings.get("pca_fit"))
    if theirs == (components, fit):
        return
    written = "without --pca" if theirs == (None, None) else f"pca_components={theirs[0]} and pca_fit={theirs[1]}"
    raise OptionError(f"{output} was written {written}, this run asks for pca_components={components} and "
                      f"pca_fit={fit}; fix: rerun with the same options to resume, or pass --overwrite to start again")


def stored_run_basis(folder: Path, components: int, fit: int) -> tuple[StoredBasis, int] | None:
    """The basis the run in ``folder`` (an output's shards folder) fitted, when that run asked for
    the same ``components`` and ``fit``, with the images it was fitted on; else None."""
    from naf_cli.pipeline.hdf5.layout import read_arrays
    from naf_cli.pipeline.resume import RunRecord

    try:
        record = RunRecord.read(folder)
    except NafError:
        return None
    if record is None or not record.run_id:
        return None
    settings = record.settings
    if settings.get("pca_components") != components or settings.get("pca_fit") != fit:
        return None
    for shard in sorted(folder.glob(f"shard-{record.run_id}-*.h5")):
        try:
            with h5py.File(shard, "r") as handle:
                basis = StoredBasis.read(read_arrays(handle), prefix=f"{PCA_GROUP}/")
        except (OSError, KeyError):
            continue
        if basis.sha256 == settings.get("pca_sha256"):
            return basis, int(settings.get("pca_fit_images", 0))  # type: ignore[call-overload]
    return None


@dataclass(frozen=True)
class GivenBasis:
    """``--pca-basis FILE``: the basis another ``--pca`` output holds, the images it was fitted
    on and the fit it asked for (recorded as this run's own, so the two runs' settings agree)."""

    path: Path
    basis: StoredBasis
    fit_images: int
    fit: int

    @classmethod
    def read(cls, path: Path, channels: int, features: Mapping[str, object]) -> GivenBasis:
        """From ``path``, checked against this run's ``channels`` and feature attributes
        (``features``: the backbone, its weights and layer must be the same)."""
        from naf_cli.features import FeatureFile

        with FeatureFile(path) as other:
            if other.pca is None:
                raise OptionError(f"{path} holds no PCA basis (it was not written with --pca); fix: pass an output of "
                                  f"naf upsample --pca, or drop --pca-basis to fit one")
            if other.pca.channels != channels:
                raise OptionError(f"the basis of {path} was fitted on {other.pca.channels} channels, these features have "
                                  f"{channels}; fix: pass an output of the same backbone and layer")
            for key in SAME_FEATURES:
                if str(other.attrs.get(key, "")) != str(features.get(key, "") or ""):
                    raise OptionError(f"the basis of {path} was fitted on other features ({key} {other.attrs.get(key, '')!r}, "
                                      f"this run {features.get(key, '')!r}); fix: pass an output of the same backbone, "
                                      f"weights and layer, or use --pca K to fit one")
            return cls(Path(path), other.pca, int(other.attrs.get("pca_fit_images", 0)), int(other.attrs.get("pca_fit", 0)))


def fit_run_basis(names: Sequence[str], low_res: Callable[[str], torch.Tensor | None], components: int, channels: int,
                  fit: int, progress: Progress) -> tuple[StoredBasis, int]:
    """The basis of a ``--pca`` run: ``components`` axes fitted on the low-resolution features
    (``low_res(name)``, None for an unreadable input) of a seeded choice of ``fit`` of
    ``names`` (every input of the whole run, in its order). Returns it and the images used."""
    check_components(components, channels)
    if not names:
        raise OptionError("no inputs to fit a PCA basis on; fix: pass a folder with images")
    chosen = seeded_choice(list(names), fit, PCA_SEED)
    per_map = max(1, PCA_SAMPLES // len(chosen))
    progress.start(len(chosen), f"fitting a {components}-component PCA basis")
    used = vectors = 0

    def maps() -> Iterator[torch.Tensor]:
        nonlocal used, vectors
        for name in chosen:
            features = low_res(name)
            progress.advance(name)
            if features is not None:
                used += 1
                vectors += min(per_map, features.shape[-2] * features.shape[-1])
                yield features

    try:  # the maps stream through the fit: only the sampled vectors are kept
        basis = fit_on(maps(), components, PCA_SEED, per_map)
    except (ValueError, NafError):
        basis = None  # too few vectors (or none): said just below
    finally:
        progress.close()
    if basis is None or vectors <= components:
        # fewer vectors than axes leave some axes arbitrary: not a basis two runs would agree on
        raise OptionError(f"{vectors} feature vector(s) from {used} readable image(s) cannot fit {components} components; "
                          f"fix: fit on more images (--pca-fit), larger ones (--long-side), or ask for fewer (--pca)")
    return StoredBasis.of(basis), used


class ProjectedFeatures:
    """Another transform's features [C, H, W] -> their ``basis`` coordinates [K, H, W]."""

    def __init__(self, inner: Transform, basis: StoredBasis, fit: int, fit_images: int, taken_from: Path | None = None) -> None:
        self.inner = inner
        self.taken_from = taken_from  # --pca-basis: the output the basis came from
        self.basis = basis
        self.fit = fit  # images the run asked to fit on (--pca-fit, or its default: fit_setting)
        self.fit_images = fit_images  # those the fit used (the readable ones among the chosen)
        self.kind = inner.kind
        self.memory_fix = inner.memory_fix

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def file_attrs(self) -> dict[str, AttrValue]:
        return {**self.inner.file_attrs(), "pca_components": self.basis.count, "pca_channels": self.basis.channels,
                "pca_variance_kept": round(self.basis.explained, 6), "pca_fit": self.fit, "pca_fit_images": self.fit_images,
                "pca_seed": PCA_SEED, "pca_sha256": self.basis.sha256,
                **({"pca_basis_from": str(self.taken_from.absolute())} if self.taken_from else {})}

    def file_arrays(self) -> dict[str, np.ndarray]:
        return {**self.inner.file_arrays(), **self.basis.arrays()}

    def bucket_key(self, image: DecodedImage, name: str) -> Hashable:
        return self.inner.bucket_key(image, name)

    def run_batch(self, images: Sequence[DecodedImage], names: Sequence[str]) -> list[Result]:
        results = self.inner.run_batch(images, names)
        for result in results:
            result.features = self.project(result.features)
        return results

    def project(self, features: FeatureMap) -> FeatureMap:
        basis = self.basis
        if features.whole is not None:
            return FeatureMap.held(basis.project(features.whole))

        def bands() -> Bands:
            for r0, r1, rows in features.bands():
                yield r0, r1, basis.project(rows)

        return FeatureMap.banded((basis.count, features.shape[1], features.shape[2]), bands)
