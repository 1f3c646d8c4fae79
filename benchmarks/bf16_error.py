"""How far NAF under bf16 autocast is from fp32, against how far bilinear is, on real photos.

    python benchmarks/bf16_error.py ../shared/photos/train --count 8 [--device cuda] [--max-percent 5]

Features: effnet-lite0 (112 channels, stride 16) at long side 448, upsampled x16 (to the
backbone input size). Prints, per photo and overall, ||bf16 - fp32|| / ||fp32 - bilinear||
(the goal: at most 5%) and the bf16 and fp32 times; exits 1 when the largest is above
``--max-percent``. On a CPU without bf16 in hardware the attention stays fp32 under autocast
(only the encoder's convolutions run in bf16).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from naf_cli import load_backbone, load_naf
from naf_cli.bench.measure import timed
from naf_cli.images import read_image
from naf_cli.pipeline.sources import list_images
from naf_cli.pipeline.transforms import ExtractFeatures, guidance_image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("photos", type=Path)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-percent", type=float, default=5.0)
    args = parser.parse_args()
    device = torch.device(args.device)
    extract = ExtractFeatures(load_backbone("effnet-lite0"), 448)
    model = load_naf().eval().to(device)
    ratios, t32, t16 = [], 0.0, 0.0
    for index, path in enumerate(list_images(args.photos)[: args.count]):
        image = read_image(path)[0]
        lr = extract(image).features.tensor()[None].to(device)
        size = (lr.shape[-2] * 16, lr.shape[-1] * 16)
        guide = guidance_image(image.rgb()[None], size).to(device)
        with torch.inference_mode():
            if index == 0:  # start-up (CUDA kernels, oneDNN primitives) is not timed
                model(guide, lr, size)
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    model(guide, lr, size)
            with timed(device) as ms32:
                fp32 = model(guide, lr, size)
            with timed(device) as ms16, torch.autocast(device.type, dtype=torch.bfloat16):
                bf16 = model(guide, lr, size).float()
            bilinear = F.interpolate(lr, size=size, mode="bilinear", align_corners=False)
        t32, t16 = t32 + ms32[0] / 1000, t16 + ms16[0] / 1000
        ratio = float((bf16 - fp32).norm() / (fp32 - bilinear).norm())
        ratios.append(ratio)
        print(f"{path.name}: {size[0]}x{size[1]}, ||bf16 - fp32|| / ||fp32 - bilinear|| = {100 * ratio:.2f}%")
    print(f"mean {100 * sum(ratios) / len(ratios):.2f}%, max {100 * max(ratios):.2f}%; "
          f"time fp32 {t32 / len(ratios):.3f} s, bf16 {t16 / len(ratios):.3f} s per photo ({device})")
    if 100 * max(ratios) > args.max_percent:
        print(f"error: bf16 is {100 * max(ratios):.2f}% off fp32, above --max-percent {args.max_percent}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
