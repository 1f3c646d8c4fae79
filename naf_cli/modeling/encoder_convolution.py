"""How the image encoder's convolutions run: oneDNN's direct convolution, or NNPACK's
Winograd transform for its 3x3 layers on a CPU.

Winograd's F(6x6, 3x3) computes a 3x3 convolution with about 5x fewer multiplications, at
the cost of transforms (measured here, 128 -> 128 channels on 448 x 448 in 14 bands, 2
AVX-512 cores: 145 ms against oneDNN's 273 ms). Its largest error is 2.5x the direct
route's, 5e-6 of the encoder's largest output (NAF's output moves by 2e-7 of its distance
from bilinear). Measured on x86 with AVX-512 only; NNPACK also has AVX2 and ARM NEON kernels.

NNPACK keeps a thread pool of its own, sized by torch's thread count when it is first used
and never resized; NAF makes it at the start of a forward, at the user's thread count, and
takes the direct route in forwards that start at another count or in another process.
Images of a batch are convolved one at a time: for a batch NNPACK would pick FFT instead.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from naf_cli.errors import OptionError, UnknownNameError

DIRECT = "direct"
WINOGRAD = "winograd"
CONVOLUTIONS = {
    WINOGRAD: "NNPACK's Winograd transform for the 3x3 layers past the stem (CPU, float32)",
    DIRECT: "oneDNN's (or cuDNN's) direct convolution",
}
# below this many input channels (the stem's 3 colours) the transforms cost more than they save
MIN_WINOGRAD_CHANNELS = 16

_pool_threads: list[int] = []  # NNPACK's pool size, known from our first call
_pool_pid: list[int] = []  # the process that made it (a forked child has its memory, not its threads)
_failures: list[str] = []  # NNPACK's own error, once it has raised one (every later call is direct)


class ConvolutionError(OptionError):
    """The requested encoder convolution cannot run here."""


@functools.lru_cache(maxsize=1)
def nnpack_ready() -> bool:
    """NNPACK is built into this PyTorch and supports this CPU (the check also initialises it,
    which every NNPACK call needs first)."""
    check = getattr(torch, "_nnpack_available", None)
    if check is None or not hasattr(torch, "_nnpack_spatial_convolution"):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Could not initialize NNPACK": the refusal says it
        return bool(check())


def layer_refusal(conv: nn.Conv2d) -> str | None:
    """Why Winograd does not suit the layer ``conv``, or None when it does."""
    if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
        return "only 3x3 kernels with stride 1 (the 1x1 layers are plain matrix products)"
    if conv.in_channels < MIN_WINOGRAD_CHANNELS:
        return f"{conv.in_channels} input channels: too few for the transforms to pay"
    return None


def winograd_refusal(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why Winograd cannot run on ``device`` in ``dtype`` now, or None when it can."""
    if device.type != "cpu":
        return f"NNPACK runs on a CPU only (on {device.type} the vendor library picks its own algorithm)"
    if dtype != torch.float32:
        return f"NNPACK computes in float32 only, not {str(dtype).removeprefix('torch.')}"
    if torch.is_autocast_enabled("cpu"):
        return "autocast is on: the direct route runs the convolutions in its reduced precision"
    if torch.compiler.is_compiling():
        return "torch.compile is tracing: NNPACK's operator has no fake-tensor kernel to trace"
    if not nnpack_ready():
        return "this PyTorch has no NNPACK, or NNPACK does not support this CPU"
    get_enabled = getattr(torch._C, "_get_nnpack_enabled", None)
    if get_enabled is not None and not get_enabled():
        return "NNPACK is switched off (torch.backends.nnpack.set_flags(False))"
    if _failures:
        return f"NNPACK failed earlier in this process: {_failures[0]}"
    if _pool_pid and _pool_pid[0] != os.getpid() and _pool_threads[0] > 1:
        return "NNPACK's thread pool was made by the parent of this forked process: its threads are not here"
    if _pool_threads and torch.get_num_threads() != _pool_threads[0]:
        return (f"NNPACK's thread pool has {_pool_threads[0]} threads and torch {torch.get_num_threads()} "
                "(the pool was made at NNPACK's first use and never resizes)")
    return None


def check_convolution(name: str | None) -> None:
    """Raise UnknownNameError unless ``name`` is None (choose automatically) or a known route."""
    if name is not None and name not in CONVOLUTIONS:
        raise UnknownNameError(f"unknown encoder convolution '{name}'; known: {', '.join(CONVOLUTIONS)}")


def start_pool() -> None:
    """Have NNPACK make its thread pool now, at torch's present thread count, with one tiny
    convolution; a no-op once it exists."""
    if not _pool_threads:
        threads = torch.get_num_threads()
        torch._nnpack_spatial_convolution(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3), None, [0, 0])
        _pool_threads.append(threads)
        _pool_pid.append(os.getpid())


def resolve_convolution(name: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """The route of the layers Winograd suits, for one forward: ``name``, or Winograd where it
    can run and direct elsewhere (asked for by name, Winograd must be able to run).

    Decided before NAF fits its threads to the load: NNPACK's pool is then made at the
    user's thread count, and under load it keeps it (its threads steal each other's work, so
    a descheduled one does not stall the rest: measured x16 on 2 busy cores, NAF 5.4 s with
    Winograd against 7.3 s with the direct route at the fitted single thread).
    """
    check_convolution(name)
    if name == DIRECT:
        return DIRECT
    reason = winograd_refusal(device, dtype)
    if reason is None:
        start_pool()
        return WINOGRAD
    if name == WINOGRAD:
        raise ConvolutionError(f"encoder convolution 'winograd' cannot run here: {reason}; "
                               "fix: leave the encoder convolution to be chosen automatically")
    return DIRECT


def layer_route(conv: nn.Conv2d, route: str) -> str:
    """The route the layer ``conv`` takes in a forward whose resolved route is ``route``."""
    return DIRECT if layer_refusal(conv) is not None else route


def memory_format(route: str) -> torch.memory_format:
    """The layout a route reads fastest: NNPACK takes NCHW, oneDNN prefers channels_last."""
    return torch.contiguous_format if route == WINOGRAD else torch.channels_last


def convolve(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, route: str) -> torch.Tensor:
    """``conv2d(x, weight, bias)`` without padding, by ``route``.
    x: [B, Cin, H, W] -> [B, Cout, H - kh + 1, W - kw + 1]."""
    if route == WINOGRAD and not _failures and not torch.compiler.is_compiling():
        try:
            start_pool()
            # one image at a time: for a batch, NNPACK's own choice is FFT, slower here
            images = [torch._nnpack_spatial_convolution(image[None].contiguous(), weight, bias, [0, 0]) for image in x]
        except RuntimeError as err:  # NNPACK's status codes all read "failed": keep the run going, direct
            _failures.append(str(err).strip().splitlines()[0][:200])
        else:
            return images[0] if len(images) == 1 else torch.cat(images)
    return F.conv2d(x, weight, bias)
