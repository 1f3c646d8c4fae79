"""Cross-scale neighborhood attention: one public op over several backends.

Every output position attends to the ``k x k`` window of low-resolution keys around the
low-resolution cell it falls into (``modeling/windows.py`` says which cell and which
window). Backends: ``cells`` (cell-grouped, any ratio, autograd), ``natten`` and
``reference`` (the paper's route, K and V at the output resolution).
"""

from __future__ import annotations

import torch

from naf_cli.modeling.attention.choose import (
    BACKENDS,
    AttentionBackend,
    BackendError,
    choose_backend,
    get_backend,
    refusals,
)
from naf_cli.modeling.attention.problem import AttentionProblem

DEFAULT_CHUNK_BYTES = 256 * 2**20

__all__ = [
    "BACKENDS", "DEFAULT_CHUNK_BYTES", "AttentionBackend", "AttentionProblem", "BackendError",
    "choose_backend", "cross_scale_neighborhood_attention", "get_backend", "refusals",
]


def cross_scale_neighborhood_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    num_heads: int,
    kernel_size: int,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    backend: str | None = None,
) -> torch.Tensor:
    """Attend from every output position to its low-resolution neighborhood.

    Args:
        query: [B, D, H, W] queries at the output resolution.
        key: [B, D, h, w] keys at the low resolution.
        value: [B, C, h, w] values at the low resolution; head ``n`` uses channels
            ``[n * C / heads, (n + 1) * C / heads)``.
        num_heads: D and C are split into this many heads.
        kernel_size: window side ``k`` (the whole axis where it is shorter).
        max_chunk_bytes: budget for the temporaries of one chunk of output rows.
        backend: a name in ``BACKENDS``, or None to choose.

    Returns:
        [B, C, H, W]: each output vector is a convex combination of the value vectors
        in its window.
    """
    batch, qk_dim, out_h, out_w = query.shape
    value_dim, h, w = value.shape[1:]
    if key.shape != (batch, qk_dim, h, w):
        raise ValueError(f"key has shape {tuple(key.shape)}, expected {(batch, qk_dim, h, w)}")
    if qk_dim % num_heads or value_dim % num_heads:
        raise ValueError(
            f"query channels ({qk_dim}) and value channels ({value_dim}) must both be "
            f"divisible by the number of heads ({num_heads})"
        )
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    problem = AttentionProblem.of(query, value, (out_h, out_w), (h, w), num_heads, kernel_size, needs_grad)
    chosen = choose_backend(problem, backend)
    return chosen.attend(
        query, key, value, row0=0, out_height=out_h, num_heads=num_heads, kernel_size=kernel_size,
        max_chunk_bytes=max_chunk_bytes,
    )
