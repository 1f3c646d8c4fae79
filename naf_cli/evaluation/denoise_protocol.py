"""``naf eval --task denoise``: fixed noise on clean photos, every method on the same noisy images.

Per photo, its central ``crop x crop`` square (the whole photo when smaller) is noised with
each setting of ``EVAL_SETTINGS`` from a generator seeded by (seed, setting, photo), so
every method and every run sees the same noisy pixels. Each method's result is clipped to
[0, 1] and scored by PSNR and SSIM against the clean crop; its time is measured per
megapixel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from naf_cli.evaluation.image_quality import psnr, ssim
from naf_cli.evaluation.noise import EVAL_SETTINGS, Noise
from naf_cli.images import load_image

DEFAULT_CROP = 256
# restores one noisy image [3, H, W] in [0, 1] under a setting (peers use it to pick their parameter)
Restorer = Callable[[torch.Tensor, Noise], torch.Tensor]


def central_crop(image: torch.Tensor, side: int) -> torch.Tensor:
    """The central ``side x side`` square of [3, H, W] (the whole axis where it is shorter)."""
    h, w = image.shape[-2:]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[:, top:top + side, left:left + side]


@dataclass
class DenoiseScore:
    """One method under one noise setting, over the photos."""

    method: str
    setting: str
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    seconds: float = 0.0
    megapixels: float = 0.0

    def mean(self, key: str) -> float:
        values = self.psnr if key == "psnr" else self.ssim
        return sum(values) / len(values) if values else float("nan")

    @property
    def seconds_per_megapixel(self) -> float:
        return self.seconds / self.megapixels if self.megapixels else float("nan")


def noisy_cases(
    photos: Sequence[Path], settings: Sequence[Noise] = EVAL_SETTINGS, crop: int = DEFAULT_CROP, seed: int = 0,
) -> list[tuple[Noise, str, torch.Tensor, torch.Tensor]]:
    """(setting, photo name, clean, noisy) for every setting and photo, noise drawn reproducibly."""
    clean = [(p.name, central_crop(load_image(p), crop).contiguous()) for p in photos]
    cases = []
    for s_index, setting in enumerate(settings):
        for p_index, (name, image) in enumerate(clean):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + s_index * 1009 + p_index)
            cases.append((setting, name, image, setting.apply(image, generator)))
    return cases


def evaluate_denoising(
    cases: Sequence[tuple[Noise, str, torch.Tensor, torch.Tensor]], methods: dict[str, Restorer],
    advance: Callable[[str], None] | None = None,
) -> list[DenoiseScore]:
    """Every method on every case: one score per (method, setting), in the order given."""
    scores: dict[tuple[str, str], DenoiseScore] = {}
    for setting, name, clean, noisy in cases:
        for method, restorer in methods.items():
            score = scores.setdefault((method, setting.label), DenoiseScore(method, setting.label))
            started = time.perf_counter()
            with torch.no_grad():
                restored = restorer(noisy, setting).float().clamp(0, 1)
            score.seconds += time.perf_counter() - started
            score.megapixels += clean.shape[-2] * clean.shape[-1] / 1e6
            score.psnr.append(psnr(restored, clean))
            score.ssim.append(ssim(restored, clean))
        if advance is not None:
            advance(f"{setting.label}: {name}")
    return list(scores.values())
