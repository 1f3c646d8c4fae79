"""Composite photos with exact segmentation labels, for ``naf eval --task probe``.

Each photo is a class. A composite is a square canvas cut into a few regions (a Voronoi
partition of random seeds: straight boundaries at any angle, never aligned with a feature
grid); each region shows the pixels of one class's photo at the same canvas positions, so
every pixel's label is known exactly. The probe is trained on composites made from one half
of every photo and scored on composites made from the other half (``PART_OF_SPLIT``), so it
sees each class but never the pixels it is scored on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from naf_cli.resampling import resize_antialiased

PART_OF_SPLIT = {"train": 0, "test": 1}  # which half of each photo (left/top, right/bottom)
MARGIN = 1.25  # a half is scaled to cover this times the canvas, so crops vary in position


@dataclass(frozen=True)
class Composite:
    """A canvas ``image`` [3, S, S] in [0, 1] and its ``labels`` [S, S] (int64, the class of
    each pixel), with each class's ``sources`` [3, S, S] it was cut from (for checks)."""

    image: torch.Tensor
    labels: torch.Tensor
    sources: dict[int, torch.Tensor]


def photo_half(photo: torch.Tensor, part: int) -> torch.Tensor:
    """One half of ``photo`` [3, H, W] along its long side: 0 the left (or top), 1 the other."""
    _, height, width = photo.shape
    if width >= height:
        middle = width // 2
        return photo[:, :, :middle] if part == 0 else photo[:, :, middle:]
    middle = height // 2
    return photo[:, :middle] if part == 0 else photo[:, middle:]


def _covering_crop(half: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """``half`` scaled (antialiased) to cover ``MARGIN * size`` on its short side, then a random
    ``size`` x ``size`` crop, flipped left-right with p = 0.5."""
    _, height, width = half.shape
    scale = MARGIN * size / min(height, width)
    out_hw = (max(size, round(height * scale)), max(size, round(width * scale)))
    scaled = resize_antialiased(half[None], out_hw)[0].clamp(0, 1)
    top = int(torch.randint(0, out_hw[0] - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, out_hw[1] - size + 1, (1,), generator=generator))
    crop = scaled[:, top:top + size, left:left + size]
    return crop.flip(-1) if bool(torch.rand(1, generator=generator) < 0.5) else crop


def voronoi_labels(size: int, seeds: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """[size, size] int64: at each pixel centre, the class of the nearest seed ([N, 2] in pixels, y x)."""
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    distance = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    return classes[distance.argmin(0)]


def make_composites(photos: Sequence[torch.Tensor], split: str, count: int, size: int, seed: int = 0,
                    regions: tuple[int, int] = (3, 6)) -> list[Composite]:
    """``count`` composites of ``size`` x ``size`` from ``photos`` ([3, H, W] each, class = index),
    each of ``regions[0]`` to ``regions[1]`` Voronoi regions of distinct classes where the photos
    allow; seeded, so the same arguments give the same composites."""
    if len(photos) < 2:
        raise ValueError("composites need two photos or more")
    part = PART_OF_SPLIT[split]
    generator = torch.Generator().manual_seed(seed * 2 + part)
    halves = [photo_half(photo, part) for photo in photos]
    queue: list[int] = []  # classes are dealt from shuffled rounds of all of them: each class about equally often
    made = []
    for _ in range(count):
        n = int(torch.randint(regions[0], regions[1] + 1, (1,), generator=generator))
        distinct = min(n, len(photos))
        while len(set(queue)) < distinct:
            queue += torch.randperm(len(photos), generator=generator).tolist()
        dealt: list[int] = []
        for c in queue:
            if c not in dealt:
                dealt.append(c)
            if len(dealt) == distinct:
                break
        for c in dealt:
            queue.remove(c)
        classes = torch.tensor(dealt)[torch.arange(n) % distinct]  # fewer photos than regions: some classes twice
        seeds = torch.rand(n, 2, generator=generator, dtype=torch.float64) * size
        labels = voronoi_labels(size, seeds, classes)
        present = [int(c) for c in labels.unique()]
        sources = {c: _covering_crop(halves[c], size, generator) for c in present}
        image = torch.zeros(3, size, size)
        for c, source in sources.items():
            image = torch.where(labels[None] == c, source, image)
        made.append(Composite(image, labels, sources))
    return made


def load_photos(paths: Sequence[Path], short_side: int | None = None) -> list[torch.Tensor]:
    """Each photo as [3, H, W] float32 in [0, 1] (EXIF orientation applied), downscaled
    (antialiased) to ``short_side`` when larger, so a folder of large photos stays small in memory."""
    from naf_cli.images import load_image

    photos = []
    for path in paths:
        photo = load_image(path)
        short = min(photo.shape[-2:])
        if short_side is not None and short > short_side:
            size = (max(1, round(photo.shape[-2] * short_side / short)), max(1, round(photo.shape[-1] * short_side / short)))
            photo = resize_antialiased(photo[None], size)[0].clamp(0, 1)
        photos.append(photo)
    return photos
