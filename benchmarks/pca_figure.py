"""Side-by-side PCA picture: photo | low-res features | bilinear | NAF.

    python benchmarks/pca_figure.py examples/chelsea.jpg -o pca.png

The three feature maps share one PCA basis (fitted on the NAF output), first three
components mapped to RGB with the same 1-99 percentile range, so colours compare.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from naf_cli import load_backbone, load_image, load_naf, upsample_image
from naf_cli.upsamplers import Interpolation


def pca_basis(features: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    flat = features.flatten(1).T.float()
    mean = flat.mean(0)
    _, _, v = torch.pca_lowrank(flat - mean, q=k, center=False)
    return mean, v[:, :k]


def to_rgb(features: torch.Tensor, mean, basis, lo, hi) -> np.ndarray:
    c, h, w = features.shape
    proj = (features.flatten(1).T.float() - mean) @ basis
    proj = ((proj - lo) / (hi - lo)).clamp(0, 1)
    return (proj.reshape(h, w, 3).numpy() * 255).astype(np.uint8)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("pca.png"))
    parser.add_argument("--checkpoint", type=Path, default=None)
    args = parser.parse_args()

    image = load_image(args.image)
    backbone = load_backbone("effnet-lite0")
    sharp, sizes = upsample_image(image, backbone, load_naf(args.checkpoint), scale=16)
    smooth, _ = upsample_image(image, backbone, Interpolation("bilinear"), scale=16)
    low = F.interpolate(smooth[None], size=sizes["feature_size"], mode="area")[0]
    low = F.interpolate(low[None], size=sharp.shape[-2:], mode="nearest")[0]
    mean, basis = pca_basis(sharp)
    proj = (sharp.flatten(1).T.float() - mean) @ basis
    lo, hi = proj.quantile(0.01, dim=0), proj.quantile(0.99, dim=0)
    h, w = sharp.shape[-2:]
    photo = F.interpolate(image[None], size=(h, w), mode="bilinear", antialias=True)[0]
    panels = [(photo.permute(1, 2, 0).numpy() * 255).astype(np.uint8)]
    panels += [to_rgb(f, mean, basis, lo, hi) for f in (low, smooth, sharp)]
    Image.fromarray(np.concatenate(panels, axis=1)).save(args.output)
    print(args.output)


if __name__ == "__main__":
    main()
