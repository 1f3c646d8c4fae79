"""Upsample one photo's backbone features with NAF, from Python (no CLI).

    python examples/upsample_one.py examples/chelsea.jpg

Prints the feature shapes, then checks the upsampling against the truth: features of the
photo at long side 448, upsampled x2, compared with the backbone's own features of the
photo at twice that size (lower error is better).
"""

import sys

import torch.nn.functional as F

from naf_cli import load_backbone, load_image, load_naf, upsample_image
from naf_cli.modeling import Interpolation
from naf_cli.pipeline import resize
from naf_cli.pipeline.sizes import backbone_input_size

path = sys.argv[1] if len(sys.argv) > 1 else "examples/chelsea.jpg"
image = load_image(path)                         # [3, H, W] in [0, 1]
backbone = load_backbone("effnet-lite0")         # packaged ImageNet weights, stride 16
naf = load_naf()                                 # the shipped checkpoint

sharp, sizes = upsample_image(image, backbone, naf, scale=16)
print(f"{path}: features {sizes['feature_size']} -> {tuple(sharp.shape)}")

in_h, in_w = backbone_input_size(tuple(image.shape[-2:]), patch_size=16, long_side=448)
truth = backbone(resize(image, (2 * in_h, 2 * in_w)))[0]
for name, upsampler in (("naf", naf), ("bilinear", Interpolation("bilinear"))):
    x2, _ = upsample_image(image, backbone, upsampler, scale=2, long_side=448)
    print(f"x2 error against the backbone at twice the size: {name:8s} {F.mse_loss(x2, truth).item():.3f}")
