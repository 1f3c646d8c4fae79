"""Upsampler registry: every entry builds an ``Upsampler`` (see ``modeling/upsampler.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from naf_cli.checkpoints import CHECKPOINTS, load_naf, resolve_checkpoint
from naf_cli.errors import UnknownNameError
from naf_cli.modeling import Interpolation, Upsampler
from naf_cli.modeling.joint_bilateral import JointBilateralFilter, JointBilateralUpsampling
from naf_cli.weight_files import file_sha256


@dataclass(frozen=True)
class UpsamplerInfo:
    """What produced the upsampled features, for the output file's attributes."""

    name: str
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    settings: str = ""  # parameters that change the output, e.g. "sigma_spatial=1.0, sigma_range=0.1"


# (checkpoint: a registry name, URL or file, or None; device) -> the upsampler and its description
Factory = Callable[[str | None, str], tuple[Upsampler, UpsamplerInfo]]


def _naf(checkpoint: str | None, device: str) -> tuple[Upsampler, UpsamplerInfo]:
    path = resolve_checkpoint(checkpoint)
    model = load_naf(path, device=device)
    return model, UpsamplerInfo("naf", str(checkpoint) if checkpoint in CHECKPOINTS else str(path), file_sha256(path))


def _interpolation(mode: str) -> Factory:
    def factory(checkpoint: str | None, device: str) -> tuple[Upsampler, UpsamplerInfo]:
        return Interpolation(mode), UpsamplerInfo(mode)
    return factory


# sigmas picked on the training photos of models/photo-split.json only, by
# benchmarks/tune_joint_bilateral.py (docs/quality.md): spatial in low-res cells (JBU) or
# output pixels (JBF), range in RGB units of [0, 1]
JBU_SIGMAS = (3.0, 0.4)
JBF_SIGMAS = (8.0, 0.2)


def _jbu(checkpoint: str | None, device: str) -> tuple[Upsampler, UpsamplerInfo]:
    spatial, colour = JBU_SIGMAS
    return JointBilateralUpsampling(spatial, colour), UpsamplerInfo("jbu", settings=f"sigma_spatial={spatial}, sigma_range={colour}")


def _jbf(checkpoint: str | None, device: str) -> tuple[Upsampler, UpsamplerInfo]:
    spatial, colour = JBF_SIGMAS
    return JointBilateralFilter(spatial, colour), UpsamplerInfo("jbf", settings=f"sigma_spatial={spatial}, sigma_range={colour}")


UPSAMPLERS: dict[str, Factory] = {
    "naf": _naf,
    "nearest": _interpolation("nearest"),
    "bilinear": _interpolation("bilinear"),
    "bicubic": _interpolation("bicubic"),
    "jbu": _jbu,
    "jbf": _jbf,
}


def get_factory(name: str) -> Factory:
    """The registry entry of ``name``; unknown names fail with the list of known ones."""
    try:
        return UPSAMPLERS[name]
    except KeyError:
        raise UnknownNameError(f"unknown upsampler '{name}'; known upsamplers: {', '.join(UPSAMPLERS)}") from None


def load_upsampler(name: str, checkpoint: str | Path | None = None, device: str = "cpu") -> tuple[Upsampler, UpsamplerInfo]:
    """An upsampler and what describes it. ``checkpoint`` (a name of ``naf models``, a URL or a file)
    only applies to ``naf``."""
    return get_factory(name)(str(checkpoint) if checkpoint is not None else None, device)
