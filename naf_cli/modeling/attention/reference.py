"""The ``reference`` backend: the paper's route, in plain PyTorch.

Keys and values are nearest-resized to the output resolution, then every output position
attends to the ``k x k`` positions around it at dilation = ratio, as neighborhood
attention (NATTEN) computes it. This materialises K and V at the output resolution, so its
memory grows with the ratio squared: it is the baseline the other backends are measured
against, not a path for large outputs. Integer ratios only (dilation must be whole).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from naf_cli.modeling import windows
from naf_cli.modeling.attention.problem import AttentionProblem
from naf_cli.modeling.index_cache import index_cache


def nearest_to_output(
    name: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, row0: int, out_height: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values nearest-resized to the output, [B, D, H, W] and [B, C, H, W], for a
    backend that computes the whole output at once (``query`` must be all of it)."""
    big_h, big_w = query.shape[-2:]
    if row0 != 0 or big_h != out_height:
        raise ValueError(f"the {name} backend computes the whole output at once")
    return (F.interpolate(key, size=(big_h, big_w), mode="nearest"),
            F.interpolate(value, size=(big_h, big_w), mode="nearest"))


@index_cache(64)
def dilated_neighbors(n_out: int, n_low: int, kernel_size: int, device: torch.device) -> torch.Tensor:
    """[n_out, k']: positions on the output axis that output position ``p`` attends to.

    With dilation ``d = n_out / n_low``, ``p`` sees the positions congruent to it modulo
    ``d``; its window on that sub-grid starts at ``clamp(p // d - k // 2, 0, n_low - k)``.
    """
    dilation = n_out // n_low
    p = torch.arange(n_out, dtype=torch.long)
    start = windows.window_start(n_low, kernel_size)[p // dilation]
    steps = torch.arange(windows.window_size(n_low, kernel_size), dtype=torch.long)
    return ((start[:, None] + steps) * dilation + (p % dilation)[:, None]).to(device)


class ReferenceBackend:
    """K and V at the output resolution, neighborhood attention with dilation, in plain PyTorch."""

    name = "reference"
    banded = False
    description = "K, V nearest-resized to the output, dilated neighborhood attention (the paper's route)"

    def refusal(self, problem: AttentionProblem) -> str | None:
        """Needs whole ratios: the dilation is the ratio."""
        if problem.integer_ratio is None:
            return f"the ratio {problem.out_size} / {problem.low_size} is not a whole number on both axes"
        return None

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
        row0: int, out_height: int, num_heads: int, kernel_size: int, max_chunk_bytes: int,
        out: torch.Tensor | None = None, cache: dict[str, object] | None = None,
    ) -> torch.Tensor:
        """The whole output: query [B, D, H, W] (``row0`` 0), key [B, D, h, w], value [B, C, h, w] -> [B, C, H, W]."""
        batch, qk_dim, big_h, big_w = query.shape
        value_dim = value.shape[1]
        head_qk, head_v = qk_dim // num_heads, value_dim // num_heads
        k_up, v_up = nearest_to_output(self.name, query, key, value, row0, out_height)
        k_up = k_up.view(batch, num_heads, head_qk, big_h, big_w)
        v_up = v_up.view(batch, num_heads, head_v, big_h, big_w)
        rows = dilated_neighbors(big_h, key.shape[-2], kernel_size, query.device)
        cols = dilated_neighbors(big_w, key.shape[-1], kernel_size, query.device)
        window = rows.shape[1] * cols.shape[1]
        per_row = 2 * batch * num_heads * big_w * window * (head_qk + head_v + 1) * query.element_size()
        step = max(1, max_chunk_bytes // per_row)
        if out is None:
            out = query.new_empty(batch, value_dim, big_h, big_w, dtype=torch.result_type(query, value))
        q = query.reshape(batch, num_heads, head_qk, big_h, big_w)
        for r0 in range(0, big_h, step):
            r1 = min(big_h, r0 + step)
            wr, wc = rows[r0:r1, :, None, None], cols[None, None, :, :]
            # [B, heads, d, m, kh, W, kw]: each position's neighbours, gathered from the big maps
            k_nb = k_up[:, :, :, wr, wc]
            logits = torch.einsum("bndmx,bndmkxl->bnmxkl", q[:, :, :, r0:r1], k_nb) / math.sqrt(head_qk)
            weights = torch.softmax(logits.flatten(-2), dim=-1).view_as(logits)
            mixed = torch.einsum("bnmxkl,bndmkxl->bndmx", weights, v_up[:, :, :, wr, wc])
            out[:, :, r0:r1] = mixed.reshape(batch, value_dim, r1 - r0, big_w)
        return out
