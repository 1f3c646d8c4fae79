"""Held-out quality of an upsampler checkpoint against training-free baselines.

For each photo: a centred 512 x 512 crop (short side resized to 512). Target: backbone
features of the crop; input: features of the crop downsampled by the ratio. Reports the
MSE of each upsampler against the target, per ratio, averaged over the photos.

    python benchmarks/eval_heldout.py --photos ../shared/photos/train \
        --names chelsea.jpg coffee.jpg bridge.jpg ladybird.jpg
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from naf_cli.backbones import load_backbone
from naf_cli.checkpoints import load_naf
from naf_cli.images import load_image
from naf_cli.modeling import NAF, Interpolation


def centre_crop(image: torch.Tensor, side: int = 512) -> torch.Tensor:
    h, w = image.shape[-2:]
    scale = side / min(h, w)
    size = (max(side, round(h * scale)), max(side, round(w * scale)))
    image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (size[0] - side) // 2, (size[1] - side) // 2
    return image[:, top:top + side, left:left + side].clamp(0, 1)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--names", nargs="+", required=True)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--vfm", default="effnet-lite0")
    parser.add_argument("--ratios", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()

    backbone = load_backbone(args.vfm)
    torch.manual_seed(0)
    upsamplers = {
        "naf (trained)": load_naf(args.checkpoint),
        "naf (untrained)": NAF().eval(),
        "bilinear": Interpolation("bilinear"),
        "bicubic": Interpolation("bicubic"),
        "nearest": Interpolation("nearest"),
    }
    totals = {(name, r): 0.0 for name in upsamplers for r in args.ratios}
    for photo in args.names:
        crop = centre_crop(load_image(args.photos / photo))[None]
        target = backbone(crop)
        for ratio in args.ratios:
            small = F.interpolate(crop, scale_factor=1 / ratio, mode="bilinear", antialias=True, align_corners=False)
            low = backbone(small)
            for name, up in upsamplers.items():
                totals[(name, ratio)] += F.mse_loss(up(crop, low, tuple(target.shape[-2:])), target).item() / len(args.names)
    print("| upsampler | " + " | ".join(f"MSE x{r}" for r in args.ratios) + " |")
    print("|---|" + "---|" * len(args.ratios))
    for name in upsamplers:
        print(f"| {name} | " + " | ".join(f"{totals[(name, r)]:.3f}" for r in args.ratios) + " |")


if __name__ == "__main__":
    main()
