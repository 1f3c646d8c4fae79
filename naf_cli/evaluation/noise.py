"""Synthetic noise for training and evaluating the restoration variant, one definition for both.

Images are RGB in [0, 1]. Gaussian noise adds ``sigma * N(0, 1)`` to every sample;
channel-wise salt-and-pepper replaces each sample independently, with probability ``p``, by
0 or 1 (even odds); mixed applies both. The noisy image is clipped to [0, 1], as a saved
photo would be: the one clipping convention of training and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("gaussian", "salt-pepper", "mixed")


@dataclass(frozen=True)
class Noise:
    """``kind`` in KINDS; ``sigma`` of the Gaussian part, ``p`` of the salt-and-pepper part."""

    kind: str
    sigma: float = 0.0
    p: float = 0.0

    @property
    def label(self) -> str:
        if self.kind == "gaussian":
            return f"gaussian {self.sigma:g}"
        if self.kind == "salt-pepper":
            return f"salt-pepper {self.p:g}"
        return f"mixed {self.sigma:g}+{self.p:g}"

    def apply(self, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """clean [..., 3, H, W] -> noisy, same shape, in [0, 1]; the noise is drawn on the CPU from ``generator``."""
        noisy = clean.detach().float().cpu().clone()
        if self.sigma > 0:
            noisy += self.sigma * torch.randn(noisy.shape, generator=generator)
        if self.p > 0:
            hit = torch.rand(noisy.shape, generator=generator) < self.p
            salt = torch.rand(noisy.shape, generator=generator) < 0.5
            noisy = torch.where(hit, salt.float(), noisy)
        return noisy.clamp_(0, 1).to(clean.device)


# the settings `naf eval --task denoise` reports (the paper's, and mixed)
EVAL_SETTINGS = (
    Noise("gaussian", sigma=0.1), Noise("gaussian", sigma=0.5),
    Noise("salt-pepper", p=0.1), Noise("salt-pepper", p=0.5),
    Noise("mixed", sigma=0.1, p=0.1),
)


def draw_noise(kinds: tuple[str, ...], generator: torch.Generator) -> Noise:
    """A training noise: a kind from ``kinds``, sigma and p uniform in [0.1, 0.5] (mixed: each in [0.05, 0.25])."""
    kind = kinds[int(torch.randint(len(kinds), (1,), generator=generator))]
    level = 0.1 + 0.4 * float(torch.rand((), generator=generator))
    if kind == "gaussian":
        return Noise(kind, sigma=level)
    if kind == "salt-pepper":
        return Noise(kind, p=level)
    other = 0.1 + 0.4 * float(torch.rand((), generator=generator))
    return Noise(kind, sigma=level / 2, p=other / 2)
