"""The checkpoint shipped in models/ loads strictly and beats bilinear on held-out photos."""

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from naf_cli.backbones import load_backbone
from naf_cli.checkpoints import load_naf, packaged_checkpoint
from naf_cli.images import load_image


def test_shipped_checkpoint_loads_and_says_how_it_was_trained():
    path = packaged_checkpoint()
    assert (path.parent / "naf-effnet-lite0.md").is_file(), "every shipped checkpoint has a model card"
    load_naf(path)  # strict
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["backbone"] == "effnet-lite0" and int(meta["steps"]) > 0


@pytest.mark.parametrize("photo", ["chelsea.jpg", "coffee.jpg"])  # held out from training
@torch.inference_mode()
def test_beats_bilinear_at_x2_on_held_out_photos(examples_dir, photo):
    image = load_image(examples_dir / photo)[None]
    crop = F.interpolate(image, size=(512, 768 if image.shape[-1] > image.shape[-2] else 512), mode="bilinear",
                         antialias=True, align_corners=False).clamp(0, 1)
    backbone = load_backbone("effnet-lite0")
    target = backbone(crop)
    low = backbone(F.interpolate(crop, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False))
    size = tuple(target.shape[-2:])
    naf_error = F.mse_loss(load_naf()(crop, low, size), target).item()
    bilinear_error = F.mse_loss(F.interpolate(low, size=size, mode="bilinear", align_corners=False), target).item()
    assert naf_error < 0.95 * bilinear_error, (naf_error, bilinear_error)
