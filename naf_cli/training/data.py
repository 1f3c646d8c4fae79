"""Random square crops of a folder of photos, at random scales, randomly flipped."""

from __future__ import annotations

from pathlib import Path

import torch

from naf_cli.errors import NafError
from naf_cli.images import load_image
from naf_cli.pipeline.sources import list_images
from naf_cli.resampling import resize_antialiased


class RandomCrops:
    """Draws ``crop x crop`` training images from a folder.

    Each draw picks a photo, rescales it so its short side is uniform in
    ``[crop, short side]`` (small photos are enlarged to ``crop``), takes a random crop and
    flips it left-right with probability 1/2. All randomness comes from ``generator``, so a
    resumed run draws the same sequence.
    """

    def __init__(self, folder: Path, crop: int = 512, exclude: tuple[str, ...] = ()) -> None:
        self.paths = [p for p in list_images(folder) if p.name not in set(exclude)]
        if not self.paths:
            raise NafError(f"no training images in {folder}; fix: pass a folder with .jpg/.png files")
        self.crop = crop
        self._cache: dict[int, torch.Tensor] = {}

    def _image(self, index: int) -> torch.Tensor:
        # decoded photos are kept as uint8: 36 photos of 1.5 Mpx take about 200 MB
        if index not in self._cache:
            self._cache[index] = (load_image(self.paths[index]) * 255).round().to(torch.uint8)
        return self._cache[index].float() / 255

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """One crop [3, crop, crop] in [0, 1]."""
        index = int(torch.randint(len(self.paths), (1,), generator=generator))
        image = self._image(index)
        h, w = image.shape[-2:]
        short = min(h, w)
        target_short = self.crop + float(torch.rand((), generator=generator)) * max(short - self.crop, 0)
        scale = target_short / short
        size = (max(self.crop, round(h * scale)), max(self.crop, round(w * scale)))
        image = resize_antialiased(image[None], size)[0]
        top = int(torch.randint(size[0] - self.crop + 1, (1,), generator=generator))
        left = int(torch.randint(size[1] - self.crop + 1, (1,), generator=generator))
        image = image[:, top:top + self.crop, left:left + self.crop]
        if float(torch.rand((), generator=generator)) < 0.5:
            image = image.flip(-1)
        return image.clamp(0, 1)

    def batch(self, size: int, generator: torch.Generator) -> torch.Tensor:
        """[size, 3, crop, crop]."""
        return torch.stack([self.sample(generator) for _ in range(size)])
