"""The ``natten`` backend: the paper's route through the NATTEN library, where installed.

As ``reference``: K and V nearest-resized to the output, ``natten.na2d`` with dilation =
ratio. On a CPU NATTEN runs its pure-PyTorch flex backend, forward only; with CUDA it uses
its fused kernels. Head sizes of queries and values must match, and its flex backend takes
powers of two from 8 to 512, so heads are zero-padded to such a size (a zero channel adds
nothing to a dot product) and the padding is cut off afterwards.
"""

from __future__ import annotations

import importlib.util
import math
import warnings

import torch
import torch.nn.functional as F

from naf_cli.modeling.attention.problem import AttentionProblem
from naf_cli.modeling.attention.reference import nearest_to_output


def _heads_last(t: torch.Tensor, num_heads: int, width: int) -> torch.Tensor:
    """[B, heads * d, H, W] -> [B, H, W, heads, width], zero-padding d up to ``width``."""
    batch, dim, big_h, big_w = t.shape
    heads = t.reshape(batch, num_heads, dim // num_heads, big_h, big_w).permute(0, 3, 4, 1, 2)
    return F.pad(heads, (0, width - dim // num_heads)).contiguous()


# the largest dense mask natten's uncompiled flex route may build (8 bytes per query-key pair)
FLEX_MASK_LIMIT = 2 * 2**30


def _compiled() -> bool:
    """Whether natten has its compiled (libnatten) kernels."""
    import natten

    return bool(getattr(natten, "HAS_LIBNATTEN", False))


def _head_width(size: int) -> int:
    """The power of two, at least 8, that holds ``size`` channels."""
    return max(8, 1 << (size - 1).bit_length())


class NattenBackend:
    """K and V at the output resolution, ``natten.na2d`` with dilation."""

    name = "natten"
    banded = False
    description = "natten.na2d on K, V nearest-resized to the output (the paper's code)"

    def refusal(self, problem: AttentionProblem) -> str | None:
        """Needs natten, whole ratios, windows that fit the grid, compiled kernels for large outputs,
        and (on CPU) no gradients."""
        if importlib.util.find_spec("natten") is None:
            return "natten is not installed (pip install natten)"
        if problem.integer_ratio is None:
            return f"the ratio {problem.out_size} / {problem.low_size} is not a whole number on both axes"
        if min(problem.low_size) < problem.kernel_size:
            return f"the feature grid {problem.low_size} is smaller than the {problem.kernel_size}x{problem.kernel_size} window"
        widest = max(problem.qk_dim, problem.value_dim) // problem.num_heads
        if _head_width(widest) > 512:
            return f"heads of {widest} channels exceed natten's 512"
        if not _compiled():  # on any device: a CUDA machine may have natten built without its kernels
            positions = problem.out_size[0] * problem.out_size[1]
            mask_bytes = 8 * positions * positions
            if mask_bytes > FLEX_MASK_LIMIT:
                return (f"without compiled kernels natten's route (flex attention, not compiled) builds a dense "
                        f"{positions}x{positions} mask, {mask_bytes / 2**30:.1f} GiB here")
        if problem.needs_grad and problem.device_type == "cpu":
            return "natten has no backward pass on CPU"
        return None

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
        row0: int, out_height: int, num_heads: int, kernel_size: int, max_chunk_bytes: int,
        out: torch.Tensor | None = None, cache: dict[str, object] | None = None,
    ) -> torch.Tensor:
        """The whole output: query [B, D, H, W] (``row0`` 0), key [B, D, h, w], value [B, C, h, w] -> [B, C, H, W]."""
        import natten

        batch, qk_dim, big_h, big_w = query.shape
        value_dim = value.shape[1]
        head_qk, head_v = qk_dim // num_heads, value_dim // num_heads
        width = _head_width(max(head_qk, head_v))
        k_up, v_up = nearest_to_output(self.name, query, key, value, row0, out_height)
        dilation = (big_h // key.shape[-2], big_w // key.shape[-1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flex attention without torch.compile, deprecations
            attended = natten.na2d(
                _heads_last(query, num_heads, width), _heads_last(k_up, num_heads, width),
                _heads_last(v_up, num_heads, width), kernel_size=kernel_size, dilation=dilation,
                scale=1.0 / math.sqrt(head_qk),
            )
        result = attended[..., :head_v].permute(0, 3, 4, 1, 2).reshape(batch, value_dim, big_h, big_w)
        if out is None:
            return result
        return out.copy_(result)
