"""torch Datasets over feature files, for DataLoader use (any ``num_workers``, fork or spawn)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from naf_cli.checkpoint_choice import resolve_auto
from naf_cli.features import FeatureFile
from naf_cli.images import read_image
from naf_cli.pipeline.sizes import OutputSize

if TYPE_CHECKING:
    from naf_cli.pipeline.transforms import UpsampleFeatures


def source_image_path(features: FeatureFile, name: str, image_root: Path | None) -> Path:
    """Where the photo of ``name`` is: under ``image_root`` by name, else its recorded ``source_path``."""
    if image_root is not None:
        return Path(image_root) / name
    recorded = features.image_attrs(name).get("source_path", "")
    if not recorded:
        from naf_cli.errors import NafError

        raise NafError(f"{features.path}: {name} records no source_path; fix: pass the photos' folder (--image-root)")
    return Path(recorded)


class FeatureDataset(Dataset):
    """Items ``{"name": str, "features": float32 [C, H, W]}`` of a feature file, in name order."""

    def __init__(self, path: Path | str, names: list[str] | None = None) -> None:
        self.file = FeatureFile(path)
        self.names = list(names) if names is not None else list(self.file)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        return {"name": name, "features": torch.from_numpy(self.file[name]).float()}


class UpsamplingDataset(Dataset):
    """Low-resolution features from an extract file, upsampled when read.

    Storage stays at low resolution; the upsampler (loaded once per worker process, by name)
    runs in the loader, guided by each photo (found by ``source_path`` or under ``image_root``).
    ``checkpoint``: NAF's weights; ``auto`` picks them for the file's backbone (``naf models``;
    the pick and its reason: ``checkpoint_choice``).
    ``memory_limit``: bytes one forward may use (default: what is available); a NAF output
    that needs more is computed band by band and assembled. Items: ``{"name", "features":
    [C, H, W] float32, "output_size": (H, W)}``.
    """

    def __init__(
        self, path: Path | str, upsampler: str = "naf", checkpoint: Path | str | None = "auto",
        output_size: OutputSize = OutputSize(), image_root: Path | None = None, memory_limit: int | None = None,
    ) -> None:
        self.file = FeatureFile(path)
        self.names = list(self.file)
        self.upsampler_name = upsampler
        # auto is resolved here, in the caller's process (not in a loader's worker): a missing
        # release fails at construction, and ``checkpoint_choice`` says what was picked and why
        self.checkpoint, self.checkpoint_choice = resolve_auto(
            None if checkpoint is None else str(checkpoint), str(self.file.attrs.get("backbone", "")), upsampler)
        self.output_size = output_size
        self.image_root = Path(image_root) if image_root is not None else None
        self.memory_limit = memory_limit
        self._transform: UpsampleFeatures | None = None

    def __len__(self) -> int:
        return len(self.names)

    def _upsample(self) -> UpsampleFeatures:
        if self._transform is None:
            from naf_cli.pipeline.transforms import UpsampleFeatures
            from naf_cli.upsamplers import load_upsampler

            upsampler, info = load_upsampler(self.upsampler_name, self.checkpoint)
            self._transform = UpsampleFeatures(upsampler, info, self.output_size, self.memory_limit)
        return self._transform

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        image, _ = read_image(source_image_path(self.file, name, self.image_root))
        low = torch.from_numpy(self.file[name]).float()[None]
        upsampled, size = self._upsample()(image.rgb()[None], low)
        return {"name": name, "features": upsampled[0].tensor(), "output_size": size}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_transform"] = None  # each worker loads its own upsampler
        return state
