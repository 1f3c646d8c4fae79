"""Upsampler registry: every upsampler is called as ``up(image, features, output_size)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from naf_cli.checkpoints import file_sha256, load_naf, packaged_checkpoint
from naf_cli.errors import UnknownNameError


class Interpolation(nn.Module):
    """Training-free upsampling by ``F.interpolate``; the image is ignored."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, image: torch.Tensor, features: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """features [B, C, h, w] -> [B, C, H, W]."""
        align = None if self.mode == "nearest" else False
        return F.interpolate(features, size=tuple(output_size), mode=self.mode, align_corners=align)


@dataclass(frozen=True)
class UpsamplerInfo:
    """What produced the upsampled features, for the output file's attributes."""

    name: str
    checkpoint: str = ""
    checkpoint_sha256: str = ""


def _naf(checkpoint: Path | None, device: str) -> tuple[nn.Module, UpsamplerInfo]:
    path = Path(checkpoint) if checkpoint is not None else packaged_checkpoint()
    model = load_naf(path, device=device)
    return model, UpsamplerInfo("naf", str(path), file_sha256(path))


def _interpolation(mode: str) -> Callable[[Path | None, str], tuple[nn.Module, UpsamplerInfo]]:
    def factory(checkpoint: Path | None, device: str) -> tuple[nn.Module, UpsamplerInfo]:
        return Interpolation(mode), UpsamplerInfo(mode)
    return factory


UPSAMPLERS: dict[str, Callable[[Path | None, str], tuple[nn.Module, UpsamplerInfo]]] = {
    "naf": _naf,
    "nearest": _interpolation("nearest"),
    "bilinear": _interpolation("bilinear"),
    "bicubic": _interpolation("bicubic"),
}


def load_upsampler(name: str, checkpoint: str | Path | None = None, device: str = "cpu") -> tuple[nn.Module, UpsamplerInfo]:
    """An upsampler module and what describes it. ``checkpoint`` only applies to ``naf``."""
    try:
        factory = UPSAMPLERS[name]
    except KeyError:
        raise UnknownNameError(f"unknown upsampler '{name}'; known upsamplers: {', '.join(UPSAMPLERS)}") from None
    return factory(Path(checkpoint) if checkpoint is not None else None, device)
