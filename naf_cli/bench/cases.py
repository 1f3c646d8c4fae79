"""What one benchmark row runs, and what can be said about it before running it:
output and guidance sizes, an analytic FLOP count, parameters, predicted memory."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from torch import nn

from naf_cli.modeling import NAF
from naf_cli.modeling.guidance import guidance_size
from naf_cli.modeling.joint_bilateral import JointBilateral
from naf_cli.upsamplers import load_upsampler

PRECISIONS = ("fp32", "bf16", "fp16")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
BASELINES = ("jbu", "jbf")  # image-guided, training-free: built by load_upsampler with the shipped settings
UPSAMPLERS = ("naf", *INTERPOLATIONS, *BASELINES)
FLOOR = "floor"
NO_BACKEND = "-"


@dataclass(frozen=True)
class BenchCase:
    """One row: an upsampler (or the convolution ``floor``) at one ratio and setting.

    Defaults are the paper's table: features [384, 28, 28], a 448 x 448 guidance photo.
    """

    upsampler: str
    ratio: float
    backend: str = NO_BACKEND      # attention backend (NAF only); "auto" lets NAF choose
    channels: int = 384
    lr_size: int = 28
    batch: int = 1
    precision: str = "fp32"
    device: str = "cpu"
    image_size: int = 448
    banded: bool = False           # NAF's band API into a sink: the output is never held whole
    compiled: bool = False         # NAF with its compiled fused kernels (modeling.fused_kernels)

    @property
    def output_size(self) -> int:
        """Side of the square output: ``lr_size * ratio``, rounded."""
        return max(1, round(self.lr_size * self.ratio))

    @property
    def guidance(self) -> tuple[int, int]:
        """The guidance size NAF encodes (the photo, reduced by its 4x rule)."""
        side, out = self.image_size, self.output_size
        return guidance_size((side, side), (out, out)) or (side, side)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def expand_cases(
    upsamplers: Iterable[str], backends: Iterable[str], ratios: Iterable[float], *, channels: int, lr_size: int,
    batch: int, precision: str, device: str, image_size: int, banded: bool, floor: bool, compiled: bool = False,
) -> list[BenchCase]:
    """One case per upsampler x backend x ratio (backends and ``compiled`` apply to NAF only),
    plus one fp32 floor row per ratio first when ``floor``."""
    backends = list(backends)
    cases = []
    for ratio in ratios:
        common = dict(ratio=ratio, channels=channels, lr_size=lr_size, batch=batch, device=device, image_size=image_size)
        if floor:
            cases.append(BenchCase(FLOOR, precision="fp32", **common))  # type: ignore[arg-type]
        for upsampler in upsamplers:
            names = backends if upsampler == "naf" else [NO_BACKEND]
            for backend in names:
                cases.append(BenchCase(
                    upsampler, backend=backend, precision=precision, banded=banded and upsampler == "naf",
                    compiled=compiled and upsampler == "naf", **common,  # type: ignore[arg-type]
                ))
    return cases


def floor_layers(model: NAF) -> list[nn.Sequential]:
    """The encoder's convolutions as plain ``nn.Conv2d`` (zero padding, no norms), one chain per branch."""
    chains = []
    for branch in (model.image_encoder.encoder, model.image_encoder.sem_encoder):
        convs = [m for m in branch.modules() if isinstance(m, nn.Conv2d)]
        chains.append(nn.Sequential(*(
            nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size[0], padding=c.kernel_size[0] // 2) for c in convs
        )))
    return chains


def conv_flops(module: nn.Module, pixels: int) -> int:
    """Multiply-adds (2 FLOPs each) of every Conv2d in ``module`` applied at ``pixels`` positions (stride 1)."""
    total = 0
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            kh, kw = conv.kernel_size
            total += 2 * conv.in_channels * conv.out_channels // conv.groups * kh * kw * pixels
    return total


def attention_flops(model: NAF, out_pixels: int, channels: int, lr_size: int) -> int:
    """2 FLOPs per multiply-add: each output position takes ``window`` dot products with
    keys (``dim`` channels over the heads) and mixes ``window`` values (``channels``)."""
    window = min(model.kernel_size, lr_size) ** 2
    return 2 * out_pixels * window * (model.image_encoder.rope.dim + channels)


def case_settings(case: BenchCase) -> str:
    """What the row's upsampler was built with, beyond its name (the baselines' shipped sigmas)."""
    return load_upsampler(case.upsampler)[1].settings if case.upsampler in BASELINES else ""


def case_flops(case: BenchCase, model: NAF) -> int | None:
    """FLOPs of one image (convolutions and matrix products, as ``torch.utils.flop_counter`` counts);
    None for the baselines, whose cost is mostly elementwise."""
    guide_pixels = case.guidance[0] * case.guidance[1]
    if case.upsampler == FLOOR:
        return sum(conv_flops(chain, guide_pixels) for chain in floor_layers(model))
    if case.upsampler == "naf":
        return conv_flops(model.image_encoder, guide_pixels) + attention_flops(model, case.output_size**2, case.channels, case.lr_size)
    if case.upsampler in BASELINES:
        return None
    return 0  # interpolation: no multiply-accumulate layers


def case_params(case: BenchCase, model: NAF) -> int:
    """Learned parameters of what the row runs."""
    if case.upsampler == FLOOR:
        return sum(p.numel() for chain in floor_layers(model) for p in chain.parameters())
    if case.upsampler == "naf":
        return sum(p.numel() for p in model.parameters())
    return 0


def output_bytes(case: BenchCase) -> int:
    """The float32 output of one forward."""
    return case.batch * case.channels * case.output_size**2 * 4


def predicted_bytes(case: BenchCase, model: NAF) -> int:
    """Memory one forward is expected to need, to skip rows that cannot fit."""
    out = (case.output_size, case.output_size)
    if case.upsampler == FLOOR:
        return case.batch * case.guidance[0] * case.guidance[1] * 128 * 4 * 3
    if case.upsampler in BASELINES:
        baseline = load_upsampler(case.upsampler)[0]
        assert isinstance(baseline, JointBilateral)
        return baseline.peak_bytes(case.channels, out, case.batch)
    if case.upsampler != "naf":
        return output_bytes(case)
    need = model.peak_bytes(case.channels, out, case.batch, case.guidance)
    if case.backend not in ("auto", "cells"):
        # K and V at the output resolution, the whole query map, and their working copies
        need += 3 * case.batch * case.output_size**2 * (model.image_encoder.rope.dim + case.channels) * 4
    if case.banded:
        need -= output_bytes(case)
    return need


