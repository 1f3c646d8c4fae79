"""Labelled panels side by side: photo | low-res | each upsampler, as one picture."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from naf_cli.resampling import resize_antialiased

LABEL_HEIGHT = 22
GAP = 4


@dataclass(frozen=True)
class Panel:
    """``pixels`` [3, H, W] in [0, 1] and the label drawn above it."""

    label: str
    pixels: torch.Tensor


def fit_height(pixels: torch.Tensor, height: int) -> torch.Tensor:
    """[3, H, W] scaled to ``height`` rows, aspect kept. Feature maps smaller than that are
    enlarged by nearest neighbour, so their true resolution stays visible; larger ones are
    reduced with antialiasing."""
    h, w = pixels.shape[-2:]
    width = max(1, round(w * height / h))
    if (h, w) == (height, width):
        return pixels
    if h < height:
        return F.interpolate(pixels[None], size=(height, width), mode="nearest")[0]
    return resize_antialiased(pixels[None], (height, width))[0].clamp(0, 1)


def compose(panels: list[Panel], height: int) -> torch.Tensor:
    """Every panel at ``height`` rows, left to right with a white gap, labels on top: [3, H', W']."""
    fitted = [fit_height(panel.pixels.float(), height) for panel in panels]
    width = sum(p.shape[-1] for p in fitted) + GAP * (len(fitted) - 1)
    canvas = Image.new("RGB", (width, height + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    x = 0
    for panel, pixels in zip(panels, fitted, strict=True):
        array = (pixels.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
        canvas.paste(Image.fromarray(array), (x, LABEL_HEIGHT))
        draw.text((x + 2, 4), panel.label, fill="black", font=font)
        x += pixels.shape[-1] + GAP
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255
