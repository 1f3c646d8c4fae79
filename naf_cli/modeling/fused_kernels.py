"""NAF's memory-bound inference steps, as PyTorch's separate passes or compiled into one.

Three steps of the banded inference path are elementwise work over a band that eager
PyTorch does in several passes over memory, or slowly: RoPE's rotation of a band of query
rows (four strided passes), the per-channel sums and sums of squares that give the next
GroupNorm its statistics (a product into a temporary, then two reductions), and the copy of
an NCHW band into the encoder's channels_last output (a transposition ATen does at a tenth
of inductor's speed). torch.compile (inductor: C++ on a CPU, Triton on CUDA) makes each one
pass (measured per band in docs/benchmarks.md#compiled-kernels). The convolutions and matrix
products stay with their libraries, so no compiled region holds a loop over bands (the whole
module does not compile at the paper's size: inductor overflows the recursion limit).

Compiling costs seconds (inductor's on-disk cache keeps the kernels for later runs), so by
default NAF compiles only once a run has spent ``COMPILE_AFTER_SECONDS`` in its forwards,
and only on a CPU in float32, where it was measured. Kernels are compiled for dynamic shapes
(no recompile for a new image size or band height) and read torch's thread count when they
run; NAF fits that count to the load between bands, and torch.compile recompiles for each
count it sees, so compiled steps run at the count rounded down to a power of two.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from naf_cli.errors import OptionError, UnknownNameError

EAGER = "eager"
COMPILED = "compiled"
FUSED_KERNELS = {
    COMPILED: "torch.compile (inductor): RoPE's rotation, GroupNorm's sums, the encoder's output copy, one pass each",
    EAGER: "PyTorch's operations, one pass over memory each",
}
# A run that has spent T in NAF's forwards is expected to last about as long again; compiled
# kernels save ~8% of it (measured: 36 photo sizes, x16, 2 AVX-512 cores) and compiling with
# the recompiles a run meets costs ~10-15 s, so compiling pays once 0.08 T > 15 s.
COMPILE_AFTER_SECONDS = 180.0
# compiled variants of one step: thread counts (powers of two) x the layouts and strides it meets
RECOMPILE_LIMIT = 64

_failures: list[str] = []  # the first compile or kernel failure (every later call runs eagerly)


class FusedKernelsError(OptionError):
    """The requested fused kernels cannot run here."""


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> torch.Tensor:
    """RoPE's rotation of each head's halves: ``[x1, x2] -> [x1 c - x2 s, x2 c + x1 s]``.

    Args:
        x: [B, D, r, W], D = num_heads * head_dim (any memory format).
        cos, sin: [r, W, 1, head_dim / 2] (the head axis broadcast), in x's dtype.

    Returns:
        [B, D, r, W] in channels_last.
    """
    batch, dim, n_rows, width = x.shape
    half = dim // num_heads // 2
    x = x.contiguous(memory_format=torch.channels_last)
    out = torch.empty_like(x, memory_format=torch.channels_last)
    source = x.permute(0, 2, 3, 1).view(batch, n_rows, width, num_heads, 2, half)
    target = out.permute(0, 2, 3, 1).view(batch, n_rows, width, num_heads, 2, half)
    x1, x2, o1, o2 = source[..., 0, :], source[..., 1, :], target[..., 0, :], target[..., 1, :]
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=-1)
    torch.mul(x2, cos, out=o2)
    o2.addcmul_(x1, sin)
    return out


def channel_sums(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel sums and sums of squares of x [B, C, H, W]: float64 [B, C] each."""
    if x.is_contiguous():
        # each layout's fastest reduction (a norm over channels_last is 15x slower than this)
        return x.sum((2, 3)).double(), torch.linalg.vector_norm(x, dim=(2, 3)).double().square()
    flat = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])
    return flat.sum(1).double(), (flat * flat).sum(1).double()


def relayout(target: torch.Tensor, source: torch.Tensor) -> None:
    """``target.copy_(source)``, for tensors of one shape in different memory formats."""
    target.copy_(source)


def _rotate_in_one_pass(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``rotate_pairs`` as one expression, for inductor to fuse."""
    batch, dim, n_rows, width = x.shape
    pairs = x.permute(0, 2, 3, 1).reshape(batch, n_rows, width, num_heads, 2, dim // num_heads // 2)
    x1, x2 = pairs[..., 0, :], pairs[..., 1, :]
    rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-2)
    return rotated.reshape(batch, n_rows, width, dim).permute(0, 3, 1, 2)


def _sums_in_one_pass(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``channel_sums`` as one expression (summed in x's dtype, as there), for inductor to fuse."""
    return x.sum((2, 3)).double(), (x * x).sum((2, 3)).double()


@dataclass(frozen=True)
class FusedKernels:
    """One implementation of each fused step (``rotate_pairs``, ``channel_sums``, ``relayout``)."""

    name: str
    rotate_pairs: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
    channel_sums: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    relayout: Callable[[torch.Tensor, torch.Tensor], None]


EAGER_KERNELS = FusedKernels(EAGER, rotate_pairs, channel_sums, relayout)


def compile_failure(err: BaseException) -> str:
    """The line of a torch.compile failure that names the error (its first line is often just
    "backend='inductor' raised:")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = next((line for line in lines if "Error" in line), lines[0] if lines else "")
    return f"{type(err).__name__}: {named[:200]}"


def failure() -> str | None:
    """The compile or kernel failure that sent this process back to eager kernels, if any."""
    return _failures[0] if _failures else None


# the form inductor fuses best, of each step
_ONE_PASS: dict[str, Callable[..., Any]] = {
    "rotate_pairs": _rotate_in_one_pass, "channel_sums": _sums_in_one_pass, "relayout": relayout,
}


@functools.cache
def _compiled(name: str) -> Callable[..., Any]:
    # dynamic threads: a kernel reads torch's thread count when it runs, not when it was built
    return torch.compile(_ONE_PASS[name], dynamic=True, options={"cpp.dynamic_threads": True})


@contextlib.contextmanager
def _compile_bounds(device: torch.device) -> Iterator[None]:
    """Around a compiled call: on a CPU, torch's thread count rounded down to a power of two;
    and room for more variants than torch.compile's default 8 per step.

    torch.compile guards on the thread count, which NAF moves with the load: every new count
    is a recompile. Powers of two bound them (1, 2, 4... up to the CPUs), times the few
    layouts and strides a step meets; past the limit a step would run uncompiled. Like NAF's
    own thread fitting, this sets process-wide state: one NAF forward at a time per process.
    """
    threads = torch.get_num_threads()
    rounded = 1 << (threads.bit_length() - 1) if device.type == "cpu" else threads
    if rounded != threads:
        torch.set_num_threads(rounded)
    try:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            yield
    finally:
        if rounded != threads:
            torch.set_num_threads(threads)


def _compiled_or_eager(name: str, eager: Callable[..., Any]) -> Callable[..., Any]:
    """Step ``name`` compiled (at its first call), or ``eager`` once compiling has failed.

    A compiled call that raises is retried eagerly: when that works, the failure was the
    compiler's, and every later call runs eagerly (with one warning); when the eager step
    raises too, its error is the caller's to see.
    """
    def run(first: torch.Tensor, *rest: object) -> Any:
        if not _failures:
            try:
                with _compile_bounds(first.device):
                    return _compiled(name)(first, *rest)
            except Exception as err:
                result = eager(first, *rest)
                _failures.append(compile_failure(err))
                warnings.warn(f"NAF's compiled kernels failed ({_failures[0]}); it goes on with eager kernels, "
                              "a little slower", RuntimeWarning, stacklevel=2)
                return result
        return eager(first, *rest)
    return run


_relayout_compiled = _compiled_or_eager("relayout", relayout)


def _relayout_where_it_pays(target: torch.Tensor, source: torch.Tensor) -> None:
    """Compiled for a change of layout only: between tensors of one layout ATen's copy is the faster."""
    if (target.stride(1) == 1) == (source.stride(1) == 1):  # channels innermost in both, or in neither
        relayout(target, source)
    else:
        _relayout_compiled(target, source)


COMPILED_KERNELS = FusedKernels(
    COMPILED, _compiled_or_eager("rotate_pairs", rotate_pairs), _compiled_or_eager("channel_sums", channel_sums),
    _relayout_where_it_pays,
)


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend (inductor) builds its kernels with, if it is
    there: ``$CXX`` where set, else g++ (clang++ on macOS), as inductor itself chooses."""
    return shutil.which(os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++"))


def compile_refusal(device: torch.device) -> str | None:
    """Why compiled kernels cannot run on ``device`` now, or None when they can."""
    if torch.compiler.is_compiling():
        return "torch.compile is already tracing NAF: its graph holds these steps"
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if torch._dynamo.config.disable:
        return "torch.compile is switched off (TORCH_COMPILE_DISABLE=1)"
    if device.type == "cpu" and cxx_compiler() is None:
        return "no C++ compiler found ($CXX, else g++ on the PATH): inductor builds CPU kernels with it"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "Triton is not installed: inductor builds CUDA kernels with it"
    if device.type not in ("cpu", "cuda"):
        return f"inductor's kernels are not used on {device.type}"
    if _failures:
        return f"compiling failed earlier in this process: {_failures[0]}"
    return None


def check_kernels(name: str | None) -> None:
    """Raise UnknownNameError unless ``name`` is None (choose automatically) or known."""
    if name is not None and name not in FUSED_KERNELS:
        raise UnknownNameError(f"unknown fused kernels '{name}'; known: {', '.join(FUSED_KERNELS)}")


class KernelChoice:
    """Which kernels a NAF module's forwards use: ``name``, or with None, eager kernels until
    the module has spent ``compile_after_seconds`` in forwards on a CPU in float32, compiled
    from then on where they can run (asked for by name, they must be able to)."""

    def __init__(self, name: str | None, compile_after_seconds: float = COMPILE_AFTER_SECONDS) -> None:
        check_kernels(name)
        self.name = name
        self.compile_after_seconds = compile_after_seconds
        self.forward_seconds = 0.0  # spent in forwards that could have compiled
        self.last: str | None = None  # the name of the kernels resolved for the latest forward
        self._counting = False  # whether the latest forward's time counts towards the compile

    def resolve(self, device: torch.device, dtype: torch.dtype) -> FusedKernels:
        """The kernels of one forward."""
        kernels = self._choose(device, dtype)
        self.last = kernels.name
        self._counting = self.name is None and self._measured(device, dtype)
        return kernels

    @staticmethod
    def _measured(device: torch.device, dtype: torch.dtype) -> bool:
        """Where compiled kernels were measured to win: a CPU in float32 without autocast."""
        return device.type == "cpu" and dtype == torch.float32 and not torch.is_autocast_enabled("cpu")

    def _choose(self, device: torch.device, dtype: torch.dtype) -> FusedKernels:
        if self.name == EAGER:
            return EAGER_KERNELS
        if self.name == COMPILED:
            reason = compile_refusal(device)
            if reason is None:
                return COMPILED_KERNELS
            if torch.compiler.is_compiling() or _failures:
                return EAGER_KERNELS  # an outer compile fuses them itself; after a failure the run goes on
            raise FusedKernelsError(f"fused kernels 'compiled' cannot run here: {reason}; "
                                    "fix: leave the fused kernels to be chosen automatically")
        # the refusals last: they import torch._dynamo (a second), which a short run never needs
        if self._measured(device, dtype) and self.forward_seconds >= self.compile_after_seconds and compile_refusal(device) is None:
            return COMPILED_KERNELS
        return EAGER_KERNELS

    def spent(self, seconds: float) -> None:
        """Count ``seconds`` of the latest forward towards the automatic compile (only for a
        forward that could compile: the default's, on a CPU in float32)."""
        if self._counting:
            self.forward_seconds += seconds

    def describe(self, device: torch.device) -> str:
        """One line for ``naf env``: what the default does here, and why."""
        reason = compile_refusal(device)
        if reason is not None:
            return f"{EAGER} ({reason})"
        if device.type != "cpu":
            return f"{EAGER} (compiled kernels are not measured on {device.type}; NAF(fused_kernels='compiled') uses them)"
        return (f"{EAGER}, then {COMPILED} once a run has spent {self.compile_after_seconds:g} s in NAF's float32 "
                f"forwards ({FUSED_KERNELS[COMPILED]})")
