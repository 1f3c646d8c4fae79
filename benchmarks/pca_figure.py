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
from PIL import Image

from naf_cli import load_backbone, load_image, load_naf, upsample_image
from naf_cli.modeling import Interpolation
from naf_cli.pipeline import resize


def pca_projector(features: torch.Tensor, k: int = 3):
    """A function mapping [C, H, W] features to uint8 RGB [H, W, 3] on the first ``k``
    principal components of ``features``, scaled by their 1-99 percentiles."""
    flat = features.flatten(1).T.float()
    mean = flat.mean(0)
    _, _, v = torch.pca_lowrank(flat - mean, q=k, center=False)
    basis = v[:, :k]
    fitted = (flat - mean) @ basis
    lo, hi = fitted.quantile(0.01, dim=0), fitted.quantile(0.99, dim=0)

    def project(other: torch.Tensor) -> np.ndarray:
        _, h, w = other.shape
        proj = ((other.flatten(1).T.float() - mean) @ basis - lo) / (hi - lo)
        return (proj.clamp(0, 1).reshape(h, w, 3).numpy() * 255).astype(np.uint8)

    return project


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("pca.png"))
    parser.add_argument("--checkpoint", type=Path, default=None)
    args = parser.parse_args()

    image = load_image(args.image)
    backbone = load_backbone("effnet-lite0")
    sharp, _ = upsample_image(image, backbone, load_naf(args.checkpoint), scale=16)
    smooth, _ = upsample_image(image, backbone, Interpolation("bilinear"), scale=16)
    blocky, _ = upsample_image(image, backbone, Interpolation("nearest"), scale=16)
    project = pca_projector(sharp)
    photo = resize(image, tuple(sharp.shape[-2:]))[0]
    panels = [(photo.permute(1, 2, 0).numpy() * 255).astype(np.uint8)]
    panels += [project(f) for f in (blocky, smooth, sharp)]
    Image.fromarray(np.concatenate(panels, axis=1)).save(args.output)
    print(args.output)


if __name__ == "__main__":
    main()
