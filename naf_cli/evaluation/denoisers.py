"""Classical denoisers that ``naf eval --task denoise`` compares NAF with, and their tuned settings.

Each peer maps a noisy RGB image [3, H, W] in [0, 1] and one parameter to a restored image,
clipped to [0, 1] afterwards like every method. Median and Gaussian blur are written here
in PyTorch (always available); BM3D (PyPI ``bm3d``), OpenCV's non-local means and
scikit-image's TV, bilateral and wavelet denoisers come from the optional ``[bench]`` extra
and are left out, with a note, when it is not installed.

``tuned_parameters()`` gives each peer's parameter per evaluation setting, chosen by
``benchmarks/tune_denoisers.py`` on the training photos of ``models/photo-split.json`` (never
on validation photos) and shipped as ``models/denoisers-tuned.json``. BM3D is given the true
Gaussian sigma where there is one and tuned like the others where there is none.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

BENCH_FIX = "pip install 'naf-cli[bench]'"


def median_filter(noisy: torch.Tensor, size: float) -> torch.Tensor:
    """Per-channel median over a ``size x size`` window (odd size), reflect-padded."""
    k = int(size)
    pad = k // 2
    padded = F.pad(noisy[None], (pad, pad, pad, pad), mode="reflect")[0]
    windows = padded.unfold(1, k, 1).unfold(2, k, 1)  # [3, H, W, k, k]
    return windows.reshape(*windows.shape[:3], -1).median(-1).values


def gaussian_blur(noisy: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with standard deviation ``sigma`` pixels (radius 3 sigma), reflect-padded."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-x * x / (2 * sigma * sigma))
    kernel = (kernel / kernel.sum()).to(noisy.dtype)
    image = F.pad(noisy[:, None], (radius, radius, radius, radius), mode="reflect")
    image = F.conv2d(image, kernel.view(1, 1, 1, -1))
    return F.conv2d(image, kernel.view(1, 1, -1, 1))[:, 0]


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).double().numpy()


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)


def bm3d_filter(noisy: torch.Tensor, sigma: float) -> torch.Tensor:
    import bm3d

    return _chw(bm3d.bm3d_rgb(_hwc(noisy), sigma_psd=sigma))


def nl_means(noisy: torch.Tensor, h: float) -> torch.Tensor:
    """OpenCV's coloured non-local means (8-bit input): filter strength ``h`` in grey levels of 255."""
    import cv2

    samples = (noisy.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return _chw(cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(samples), None, h, h, 7, 21) / 255.0)


def tv(noisy: torch.Tensor, weight: float) -> torch.Tensor:
    from skimage.restoration import denoise_tv_chambolle

    return _chw(denoise_tv_chambolle(_hwc(noisy), weight=weight, channel_axis=-1))


def bilateral(noisy: torch.Tensor, sigma_color: float) -> torch.Tensor:
    """scikit-image's bilateral filter; the spatial sigma is fixed at 2 pixels (the colour sigma is tuned)."""
    from skimage.restoration import denoise_bilateral

    return _chw(denoise_bilateral(_hwc(noisy), sigma_color=sigma_color, sigma_spatial=2.0, channel_axis=-1))


def wavelet(noisy: torch.Tensor, sigma: float) -> torch.Tensor:
    """scikit-image's BayesShrink wavelet denoiser in YCbCr with the given noise sigma."""
    from skimage.restoration import denoise_wavelet

    return _chw(denoise_wavelet(_hwc(noisy), sigma=sigma, channel_axis=-1, convert2ycbcr=True, rescale_sigma=True))


@dataclass(frozen=True)
class Peer:
    """A classical denoiser: ``run(noisy, parameter)``, the parameter's name, the grid it is tuned
    over, and the module it needs (None: always available)."""

    name: str
    run: Callable[[torch.Tensor, float], torch.Tensor]
    parameter: str
    grid: tuple[float, ...]
    needs: str | None = None

    @property
    def available(self) -> bool:
        return self.needs is None or importlib.util.find_spec(self.needs) is not None


PEERS: dict[str, Peer] = {peer.name: peer for peer in (
    Peer("bm3d", bm3d_filter, "sigma", (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0), "bm3d"),
    Peer("nl-means", nl_means, "h", (3, 5, 10, 15, 20, 30, 45, 60, 80, 120), "cv2"),
    Peer("tv", tv, "weight", (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0), "skimage"),
    Peer("bilateral", bilateral, "sigma_color", (0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8), "skimage"),
    Peer("wavelet", wavelet, "sigma", (0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8), "skimage"),
    Peer("median", median_filter, "size", (3, 5, 7, 9, 11, 15, 21, 31, 45)),
    Peer("gaussian-blur", gaussian_blur, "sigma", (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 9.0)),
)}

TUNED_FILE = "denoisers-tuned.json"


@cache
def tuned_parameters() -> dict[tuple[str, str], float]:
    """(peer, setting label) -> parameter, from ``models/denoisers-tuned.json`` (written by
    ``benchmarks/tune_denoisers.py`` on training photos only)."""
    from naf_cli.package_files import package_file

    recorded = json.loads(package_file(TUNED_FILE).read_text())["tuned"]
    return {(peer, label): float(value) for peer, values in recorded.items() for label, value in values.items()}


def peer_parameter(peer: Peer, setting_label: str, sigma: float) -> float:
    """The parameter a peer runs with in one setting: BM3D gets the true sigma when there is one."""
    if peer.name == "bm3d" and sigma > 0:
        return sigma
    tuned = tuned_parameters()
    if (peer.name, setting_label) not in tuned:
        raise KeyError(f"{peer.name} has no tuned parameter for {setting_label}; fix: run benchmarks/tune_denoisers.py")
    return tuned[(peer.name, setting_label)]
