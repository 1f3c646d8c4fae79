"""Transforms: what the pipeline does to decoded images, a batch at a time.

- ``ExtractFeatures``: the backbone's low-resolution features;
- ``UpsampleFeatures``: an upsampler over given low-resolution features, guided by the image;
- ``ExtractAndUpsample``: the two composed (``naf upsample``);
- ``UpsampleStored``: ``UpsampleFeatures`` over the features of an extract file (``naf upsample lr.h5``).

``run_batch(images, names)`` returns one ``Result`` per image (features [C, H, W] on the
CPU, per-image attributes, warnings); images batched together must share ``bucket_key``,
which is known before any model runs. ``file_attrs`` describes the transform for the output.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch

from naf_cli.backbones import Backbone
from naf_cli.errors import InputSkipped
from naf_cli.features import FeatureFile
from naf_cli.images import DecodedImage
from naf_cli.modeling import Upsampler
from naf_cli.pipeline.feature_map import Bands, FeatureMap
from naf_cli.pipeline.memory import available_bytes, gib
from naf_cli.pipeline.seams import AttrValue, Result
from naf_cli.pipeline.sizes import ASPECT_WARNING, OutputSize, aspect_stretch, backbone_input_size
from naf_cli.resampling import resize_antialiased
from naf_cli.upsamplers import UpsamplerInfo

Size = tuple[int, int]


class BatchTooLarge(MemoryError):
    """A batch whose forward would not fit in the memory budget; the pipeline splits it."""


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[3, H, W] or [B, 3, H, W] in [0, 1] -> size, antialiased when shrinking."""
    batched = image if image.ndim == 4 else image[None]
    if tuple(batched.shape[-2:]) == tuple(size):
        return batched
    return resize_antialiased(batched, size).clamp_(0, 1)


def guidance_size(image_hw: Size, output_hw: Size) -> Size:
    """The photo at the output size when it has more pixels than the output, else its own size."""
    return output_hw if image_hw[0] * image_hw[1] > output_hw[0] * output_hw[1] else image_hw


def guidance_image(image: torch.Tensor, output_hw: Size) -> torch.Tensor:
    """[B, 3, H_img, W_img] -> the guidance for an output of ``output_hw`` (see ``guidance_size``)."""
    return resize(image, guidance_size((int(image.shape[-2]), int(image.shape[-1])), output_hw))


def model_device(module: torch.nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _stack(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    return torch.stack(list(tensors)).to(device, non_blocking=True)


def _resized(images: Sequence[DecodedImage], size: Size, device: torch.device) -> torch.Tensor:
    """[B, 3, H, W] on ``device``: each image copied there (asynchronously from pinned memory),
    then resized there."""
    return torch.cat([resize(image.rgb().to(device, non_blocking=True), size) for image in images])


class ExtractFeatures:
    """Images -> the backbone's features [C, h, w] of each image resized to ``long_side``."""

    kind = "extract"
    memory_fix = "a smaller --long-side"

    def __init__(self, backbone: Backbone, long_side: int = 448) -> None:
        self.backbone = backbone
        self.long_side = long_side

    @property
    def device(self) -> torch.device:
        return model_device(self.backbone)

    def file_attrs(self) -> dict[str, AttrValue]:
        info = self.backbone.info
        attrs: dict[str, AttrValue] = {
            "backbone": info.name, "backbone_timm": info.timm_name, "backbone_weights": info.weights,
            "backbone_weights_sha256": info.weights_sha256,
            "patch_size": info.patch_size, "channels": info.channels, "long_side": self.long_side,
            "backbone_mean": info.mean, "backbone_std": info.std,
        }
        # files of the default layer and precision keep the attributes they always had
        if not info.default_layer:
            attrs["backbone_layer"] = info.layer
        if info.precision != "fp32":
            attrs["backbone_precision"] = info.precision
        return attrs

    def file_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def input_size(self, image_hw: Size) -> Size:
        return backbone_input_size(image_hw, self.backbone.info.patch_size, self.long_side)

    def bucket_key(self, image: DecodedImage, name: str = "") -> Hashable:
        return self.input_size(image.size)

    @torch.inference_mode()
    def features(self, images: Sequence[DecodedImage]) -> tuple[torch.Tensor, list[Result]]:
        """Images of one bucket -> (features [B, C, h, w] on the device, Results on the CPU)."""
        in_size = self.input_size(images[0].size)
        batch = _resized(images, in_size, self.device)
        features = self.backbone(batch)
        results = []
        for image, one in zip(images, features.float().cpu(), strict=True):
            result = Result(FeatureMap.held(one), {"backbone_input_size": in_size, "feature_size": (int(one.shape[-2]), int(one.shape[-1]))})
            stretch = aspect_stretch(image.size, in_size)
            if stretch > ASPECT_WARNING:
                result.warnings.append(
                    f"extreme aspect ratio: {image.size[1]}x{image.size[0]} (WxH) reaches the backbone as "
                    f"{in_size[1]}x{in_size[0]}, stretched {stretch:.1f}x; its features are less reliable"
                )
            results.append(result)
        return features, results

    def run_batch(self, images: Sequence[DecodedImage], names: Sequence[str] = ()) -> list[Result]:
        return self.features(images)[1]

    def __call__(self, image: DecodedImage, name: str = "") -> Result:
        return self.run_batch([image], [name])[0]


class UpsampleFeatures:
    """(images, low-resolution features) -> features at the size ``output_size`` gives.

    The guidance image is the photo at the output size (the photo itself when smaller). A
    forward that would not fit in memory is refused: ``BatchTooLarge`` for a batch (the
    pipeline splits it), ``InputSkipped`` for a single image.
    """

    kind = "upsample"
    memory_fix = "a smaller --output-size or --scale"

    def __init__(
        self, upsampler: Upsampler, info: UpsamplerInfo | None = None, output_size: OutputSize = OutputSize(),
        memory_limit: int | None = None,
    ) -> None:
        self.upsampler = upsampler
        self.info = info or UpsamplerInfo(type(upsampler).__name__.lower())
        self.output_size = output_size
        self.memory_limit = memory_limit

    def available(self, device: torch.device) -> int:
        """Memory a forward may take: what the device has, within ``memory_limit``."""
        have = available_bytes(device)
        return have if self.memory_limit is None else min(have, self.memory_limit)

    def file_attrs(self) -> dict[str, AttrValue]:
        attrs: dict[str, AttrValue] = {
            "upsampler": self.info.name, "checkpoint": self.info.checkpoint,
            "checkpoint_sha256": self.info.checkpoint_sha256, "output_size_mode": self.output_size.describe(),
        }
        if self.output_size.mode == "grid":
            attrs["scale"] = float(self.output_size.scale)
        if self.info.settings:
            attrs["upsampler_settings"] = self.info.settings
        return attrs

    def check_memory(self, channels: int, out_size: Size, device: torch.device, batch: int = 1, guide: Size | None = None) -> bool:
        """Whether the output fits whole (True) or only band by band (False, one image);
        ``BatchTooLarge`` or ``InputSkipped`` when neither. ``guide``: the guidance image's size."""
        have = self.available(device)
        need = self.upsampler.peak_bytes(channels, out_size, batch, guide)
        if need <= have:
            return True
        if batch > 1:
            raise BatchTooLarge(f"a batch of {batch} needs about {gib(need)}, {gib(have)} available")
        if self.upsampler.banded_peak_bytes(channels, out_size, batch, guide) <= have:
            return False
        raise InputSkipped(
            f"its {out_size[0]}x{out_size[1]} output with {channels} channels needs about {gib(need)}, "
            f"more than the {gib(have)} available; fix: a smaller --output-size or --scale"
        )

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor, features: torch.Tensor) -> tuple[list[FeatureMap], Size]:
        """image [B, 3, H_img, W_img], features [B, C, h, w] (same device) -> (B maps [C, H, W], (H, W)).

        An output that only fits band by band (one image) is a banded map, computed while the
        sink writes it.
        """
        image_hw, grid_hw = (int(image.shape[-2]), int(image.shape[-1])), (int(features.shape[-2]), int(features.shape[-1]))
        out_size = self.output_size.resolve(image_hw, grid_hw)
        guide = guidance_image(image, out_size)
        guide_size = (int(guide.shape[-2]), int(guide.shape[-1]))
        if self.check_memory(int(features.shape[1]), out_size, features.device, int(features.shape[0]), guide_size):
            return [FeatureMap.held(one) for one in self.upsampler(guide, features, out_size).float().cpu()], out_size
        upsampler = self.upsampler

        def bands() -> Bands:
            for r0, r1, rows in upsampler.forward_bands(guide, features, out_size):
                yield r0, r1, rows[0].float().cpu()

        return [FeatureMap.banded((int(features.shape[1]), *out_size), bands)], out_size


class ExtractAndUpsample:
    """Images -> backbone features -> upsampled features (``naf upsample``)."""

    kind = "upsample"
    memory_fix = "a smaller --output-size or --scale"

    def __init__(self, extract: ExtractFeatures, upsample: UpsampleFeatures) -> None:
        self.extract = extract
        self.upsample = upsample

    @property
    def device(self) -> torch.device:
        return self.extract.device

    def file_attrs(self) -> dict[str, AttrValue]:
        return {**self.extract.file_attrs(), **self.upsample.file_attrs()}

    def file_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def bucket_key(self, image: DecodedImage, name: str = "") -> tuple[Size, Size, Size]:
        """(backbone input size, output size, guidance size)."""
        in_size = self.extract.input_size(image.size)
        patch = self.extract.backbone.info.patch_size
        out_size = self.upsample.output_size.resolve(image.size, (in_size[0] // patch, in_size[1] // patch))
        return in_size, out_size, guidance_size(image.size, out_size)

    def run_batch(self, images: Sequence[DecodedImage], names: Sequence[str] = ()) -> list[Result]:
        features, results = self.extract.features(images)
        with torch.inference_mode():
            _, out_size, guide = self.bucket_key(images[0])
            guidance = _resized(images, guide, self.device)
            upsampled, out_size = self.upsample(guidance, features)
        for result, one in zip(results, upsampled, strict=True):
            result.features = one
            result.attrs["output_size"] = out_size
        return results

    def __call__(self, image: DecodedImage, name: str = "") -> Result:
        return self.run_batch([image], [name])[0]


# backbone attributes an extract file carries over into the upsampled file
STORED_BACKBONE_KEYS = ("backbone", "backbone_timm", "backbone_weights", "backbone_weights_sha256", "patch_size",
                        "channels", "long_side", "backbone_mean", "backbone_std")


class UpsampleStored:
    """Features stored in an extract file -> upsampled, guided by each photo (no backbone pass)."""

    kind = "upsample"
    memory_fix = "a smaller --output-size or --scale"

    def __init__(self, features: FeatureFile, upsample: UpsampleFeatures) -> None:
        self.stored = features
        self.upsample = upsample

    @property
    def device(self) -> torch.device:
        return model_device(self.upsample.upsampler)

    def file_attrs(self) -> dict[str, AttrValue]:
        carried = {key: self.stored.attrs[key] for key in STORED_BACKBONE_KEYS if key in self.stored.attrs}
        return {**carried, "features_from": str(self.stored.path.absolute()), **self.upsample.file_attrs()}

    def file_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def bucket_key(self, image: DecodedImage, name: str) -> tuple[tuple[int, ...], Size, Size]:
        """(stored features' shape, output size, guidance size)."""
        shape = tuple(int(v) for v in self.stored.dataset(name).shape)
        out_size = self.upsample.output_size.resolve(image.size, (int(shape[-2]), int(shape[-1])))
        return shape, out_size, guidance_size(image.size, out_size)

    @torch.inference_mode()
    def run_batch(self, images: Sequence[DecodedImage], names: Sequence[str]) -> list[Result]:
        _, out_size, guide = self.bucket_key(images[0], names[0])
        low = _stack([torch.from_numpy(self.stored[name]).float() for name in names], self.device)
        guidance = _resized(images, guide, self.device)
        upsampled, out_size = self.upsample(guidance, low)
        results = []
        for name, one in zip(names, upsampled, strict=True):
            attrs: dict[str, AttrValue] = {"feature_size": (int(low.shape[-2]), int(low.shape[-1])), "output_size": out_size}
            stored_size = self.stored.image_attrs(name).get("backbone_input_size")
            if stored_size is not None:
                attrs["backbone_input_size"] = tuple(int(v) for v in stored_size)
            results.append(Result(one, attrs))
        return results

    def __call__(self, image: DecodedImage, name: str = "") -> Result:
        return self.run_batch([image], [name])[0]
