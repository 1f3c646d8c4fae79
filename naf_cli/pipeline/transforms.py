"""Transforms: what the pipeline does to each decoded image.

- ``ExtractFeatures``: the backbone's low-resolution features;
- ``UpsampleFeatures``: an upsampler over given low-resolution features, guided by the image;
- ``ExtractAndUpsample``: the two composed (``naf upsample``);
- ``UpsampleStored``: ``UpsampleFeatures`` over the features of an extract file (``naf upsample lr.h5``).

Each returns a ``Result`` (features [C, H, W] on the CPU, per-image attributes, warnings)
and describes itself in ``file_attrs`` for the output file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from naf_cli.backbones import Backbone
from naf_cli.errors import InputSkipped
from naf_cli.features import FeatureFile
from naf_cli.images import DecodedImage
from naf_cli.modeling import Upsampler
from naf_cli.pipeline.memory import available_bytes, gib
from naf_cli.pipeline.sizes import ASPECT_WARNING, OutputSize, aspect_stretch, backbone_input_size
from naf_cli.upsamplers import UpsamplerInfo

AttrValue = str | int | float | tuple[int, ...] | tuple[float, ...]


@dataclass
class Result:
    """One image's output: ``features`` [C, H, W] (CPU), attributes and warnings for it."""

    features: torch.Tensor
    attrs: dict[str, AttrValue] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Transform(Protocol):
    kind: str  # "extract" or "upsample": what the output file holds

    @property
    def device(self) -> torch.device: ...

    def file_attrs(self) -> dict[str, AttrValue]: ...

    def __call__(self, image: DecodedImage, name: str) -> Result: ...


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[3, H, W] or [B, 3, H, W] in [0, 1] -> size, antialiased when shrinking."""
    batched = image if image.ndim == 4 else image[None]
    if tuple(batched.shape[-2:]) == tuple(size):
        return batched
    return F.interpolate(batched, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


def guidance_image(image: torch.Tensor, output_hw: tuple[int, int]) -> torch.Tensor:
    """[B, 3, H_img, W_img] -> the photo at the output size when it has more pixels, else unchanged."""
    if image.shape[-2] * image.shape[-1] > output_hw[0] * output_hw[1]:
        return resize(image, output_hw)
    return image


def model_device(module: torch.nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


class ExtractFeatures:
    """Image -> the backbone's features [C, h, w] of the image resized to ``long_side``."""

    kind = "extract"

    def __init__(self, backbone: Backbone, long_side: int = 448) -> None:
        self.backbone = backbone
        self.long_side = long_side

    @property
    def device(self) -> torch.device:
        return model_device(self.backbone)

    def file_attrs(self) -> dict[str, AttrValue]:
        info = self.backbone.info
        return {
            "backbone": info.name, "backbone_timm": info.timm_name, "backbone_weights": info.weights,
            "backbone_weights_sha256": info.weights_sha256,
            "patch_size": info.patch_size, "channels": info.channels, "long_side": self.long_side,
            "backbone_mean": info.mean, "backbone_std": info.std,
        }

    @torch.inference_mode()
    def features(self, image: torch.Tensor) -> tuple[torch.Tensor, Result]:
        """image [1, 3, H, W] on the backbone's device -> (features [1, C, h, w] there, Result on the CPU)."""
        image_hw = (int(image.shape[-2]), int(image.shape[-1]))
        in_size = backbone_input_size(image_hw, self.backbone.info.patch_size, self.long_side)
        features = self.backbone(resize(image, in_size))
        result = Result(features[0].float().cpu(), {"backbone_input_size": in_size, "feature_size": tuple(features.shape[-2:])})
        stretch = aspect_stretch(image_hw, in_size)
        if stretch > ASPECT_WARNING:
            result.warnings.append(
                f"extreme aspect ratio: {image_hw[1]}x{image_hw[0]} (WxH) reaches the backbone as "
                f"{in_size[1]}x{in_size[0]}, stretched {stretch:.1f}x; its features are less reliable"
            )
        return features, result

    def __call__(self, image: DecodedImage, name: str = "") -> Result:
        return self.features(image.rgb()[None].to(self.device))[1]


class UpsampleFeatures:
    """(image, low-resolution features) -> features at the size ``output_size`` gives.

    The guidance image is the photo at the output size (the photo itself when smaller).
    An output whose forward would not fit in memory is an ``InputSkipped``.
    """

    kind = "upsample"

    def __init__(self, upsampler: Upsampler, info: UpsamplerInfo | None = None, output_size: OutputSize = OutputSize()) -> None:
        self.upsampler = upsampler
        self.info = info or UpsamplerInfo(type(upsampler).__name__.lower())
        self.output_size = output_size

    def file_attrs(self) -> dict[str, AttrValue]:
        attrs: dict[str, AttrValue] = {
            "upsampler": self.info.name, "checkpoint": self.info.checkpoint,
            "checkpoint_sha256": self.info.checkpoint_sha256, "output_size_mode": self.output_size.describe(),
        }
        if self.output_size.mode == "grid":
            attrs["scale"] = float(self.output_size.scale)
        return attrs

    def check_memory(self, channels: int, out_size: tuple[int, int], device: torch.device) -> None:
        need = self.upsampler.peak_bytes(channels, out_size)
        have = available_bytes(device)
        if need > have:
            raise InputSkipped(
                f"its {out_size[0]}x{out_size[1]} output with {channels} channels needs about {gib(need)}, "
                f"more than the {gib(have)} available; fix: a smaller --output-size or --scale"
            )

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """image [1, 3, H_img, W_img], features [1, C, h, w] (same device) -> ([1, C, H, W], (H, W))."""
        image_hw, grid_hw = (int(image.shape[-2]), int(image.shape[-1])), (int(features.shape[-2]), int(features.shape[-1]))
        out_size = self.output_size.resolve(image_hw, grid_hw)
        self.check_memory(int(features.shape[1]), out_size, features.device)
        upsampled = self.upsampler(guidance_image(image, out_size), features, out_size)
        return upsampled, out_size


class ExtractAndUpsample:
    """Image -> backbone features -> upsampled features (``naf upsample``)."""

    kind = "upsample"

    def __init__(self, extract: ExtractFeatures, upsample: UpsampleFeatures) -> None:
        self.extract = extract
        self.upsample = upsample

    @property
    def device(self) -> torch.device:
        return self.extract.device

    def file_attrs(self) -> dict[str, AttrValue]:
        return {**self.extract.file_attrs(), **self.upsample.file_attrs()}

    def __call__(self, image: DecodedImage, name: str = "") -> Result:
        rgb = image.rgb()[None].to(self.device)
        features, result = self.extract.features(rgb)
        upsampled, out_size = self.upsample(rgb, features)
        result.features = upsampled[0].float().cpu()
        result.attrs["output_size"] = out_size
        return result


# backbone attributes an extract file carries over into the upsampled file
STORED_BACKBONE_KEYS = ("backbone", "backbone_timm", "backbone_weights", "backbone_weights_sha256", "patch_size",
                        "channels", "long_side", "backbone_mean", "backbone_std")


class UpsampleStored:
    """Features stored in an extract file -> upsampled, guided by each photo (no backbone pass)."""

    kind = "upsample"

    def __init__(self, features: FeatureFile, upsample: UpsampleFeatures) -> None:
        self.stored = features
        self.upsample = upsample

    @property
    def device(self) -> torch.device:
        return model_device(self.upsample.upsampler)

    def file_attrs(self) -> dict[str, AttrValue]:
        carried = {key: self.stored.attrs[key] for key in STORED_BACKBONE_KEYS if key in self.stored.attrs}
        return {**carried, "features_from": str(self.stored.path.absolute()), **self.upsample.file_attrs()}

    def __call__(self, image: DecodedImage, name: str = "") -> Result:
        low = torch.from_numpy(self.stored[name]).float()[None].to(self.device)
        upsampled, out_size = self.upsample(image.rgb()[None].to(self.device), low)
        attrs: dict[str, AttrValue] = {"feature_size": (int(low.shape[-2]), int(low.shape[-1])), "output_size": out_size}
        stored_size = self.stored.image_attrs(name).get("backbone_input_size")
        if stored_size is not None:
            attrs["backbone_input_size"] = tuple(int(v) for v in stored_size)
        return Result(upsampled[0].float().cpu(), attrs)
