"""The ``cells`` backend: cross-scale neighborhood attention computed cell by cell.

All output positions of one low-resolution cell share its ``k x k`` window, so the windows
are gathered once per cell, at low resolution, and each cell's queries attend to them with
batched matrix products. Keys and values are never built at the output resolution: their
memory depends on ``h x w``, not on the ratio. Rows of cells are taken one at a time and
split further by output rows so that the temporaries stay under a byte budget; one output
row is the smallest unit. Works on any device, for any ratio, with autograd.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch

from naf_cli.modeling import windows
from naf_cli.modeling.attention.precision import autocast_off, reduced_dtype
from naf_cli.modeling.attention.problem import AttentionProblem
from naf_cli.modeling.index_cache import index_cache


@dataclass(frozen=True)
class AxisLayout:
    """How one output axis splits into cells, and each cell's window on the low-res axis."""

    bounds: tuple[int, ...]      # cell i owns output positions [bounds[i], bounds[i + 1])
    group: int                   # positions per cell after padding (the largest cell)
    regular: bool                # every cell owns exactly ``group`` positions: a view suffices
    members: torch.Tensor        # [n_low * group]: output position in each padded slot
    flat_slot: torch.Tensor      # [n_out]: where each output position sits among the padded slots
    window: torch.Tensor         # [n_low, k']: low-res indices of each cell's window


@index_cache(64)
def axis_layout(n_out: int, n_low: int, kernel_size: int, device: torch.device) -> AxisLayout:
    """Index tensors for one axis, cached per (sizes, kernel, device)."""
    members, slot = windows.group_index(n_out, n_low)
    group = members.shape[1]
    flat_slot = windows.cell_of(n_out, n_low) * group + slot
    bounds = tuple(int(b) for b in windows.cell_bounds(n_out, n_low))
    return AxisLayout(
        bounds=bounds,
        group=group,
        regular=n_out == n_low * group,
        members=members.reshape(-1).to(device),
        flat_slot=flat_slot.to(device),
        window=windows.window_index(n_low, kernel_size).to(device),
    )


def _rows_per_chunk(problem: AttentionProblem, padded_width: int, window: int, fixed: int, max_chunk_bytes: int) -> int:
    """Output rows whose temporaries (grouped queries, logits, results, with one copy each) fit the budget."""
    head_qk, head_v = problem.qk_dim // problem.num_heads, problem.value_dim // problem.num_heads
    per_row = 2 * problem.batch * problem.num_heads * padded_width * (head_qk + window + head_v) * problem.element_size
    return max(1, (max_chunk_bytes - fixed) // max(per_row, 1))


def _windows(x: torch.Tensor, window_rows: torch.Tensor, window_cols: torch.Tensor) -> torch.Tensor:
    """[B, heads, d, h, w] -> [B, heads, d, kh, w, kw]: for every cell of one row of cells,
    its window (rows ``window_rows``, columns ``window_cols[j]`` for cell column j)."""
    rows = x.index_select(3, window_rows)
    kw = window_cols.shape[1]
    # every window is a run of kw columns starting at window_cols[j, 0]: slide, then pick the starts
    return rows.unfold(4, kw, 1).index_select(4, window_cols[:, 0])


def _cell_row_windows(
    k: torch.Tensor, v: torch.Tensor, window_rows: torch.Tensor, window_cols: torch.Tensor, scale: float,
    cache: dict[str, object] | None, row: int, dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One row of cells' windows in ``dtype``: keys transposed and scaled [B*heads*w, d, window],
    values [B*heads*w, dv, window]; taken from ``cache`` when the previous band used the same row."""
    if cache is not None and cache.get("cell_row") == row and cache.get("dtype") == dtype:
        kept = cache["windows"]
        assert isinstance(kept, tuple)
        return kept
    batch, heads, head_qk, _, w = k.shape
    window = window_rows.shape[0] * window_cols.shape[1]
    k_win = _windows(k, window_rows, window_cols).permute(0, 1, 4, 2, 3, 5)
    k_win = k_win.reshape(batch * heads * w, head_qk, window).mul_(scale).to(dtype)
    v_win = _windows(v, window_rows, window_cols).permute(0, 1, 4, 2, 3, 5)
    v_win = v_win.reshape(batch * heads * w, v.shape[2], window).to(dtype)
    if cache is not None:
        cache["cell_row"], cache["dtype"], cache["windows"] = row, dtype, (k_win, v_win)
    return k_win, v_win


def _softmax_logits(q: torch.Tensor, k_win: torch.Tensor, scratch: list[torch.Tensor]) -> torch.Tensor:
    """``softmax(q @ k_win)`` over the last dimension.

    Without autograd the logits go into one reused buffer and the softmax is done in place:
    a fresh multi-megabyte tensor per chunk costs more in page faults than the softmax itself.
    """
    if torch.is_grad_enabled() and (q.requires_grad or k_win.requires_grad):
        return torch.softmax(torch.bmm(q, k_win), dim=-1)
    shape = (q.shape[0], q.shape[1], k_win.shape[2])
    size = shape[0] * shape[1] * shape[2]
    if not scratch or scratch[0].numel() < size or scratch[0].dtype != q.dtype:
        scratch[:] = [q.new_empty(size)]
    logits = scratch[0][:size].view(shape)
    torch.bmm(q, k_win, out=logits)
    return torch.ops.aten._softmax.out(logits, -1, False, out=logits)


class CellsBackend:
    """Cell-grouped attention in plain PyTorch: any device, any ratio, forward and backward."""

    name = "cells"
    banded = True
    description = "windows gathered per low-res cell, batched matmuls; memory independent of the ratio"

    def refusal(self, problem: AttentionProblem) -> str | None:
        """Always runs."""
        return None

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
        row0: int, out_height: int, num_heads: int, kernel_size: int, max_chunk_bytes: int,
        out: torch.Tensor | None = None, cache: dict[str, object] | None = None,
    ) -> torch.Tensor:
        """Rows ``[row0, row0 + r)`` of the output.

        Args:
            query: [B, D, r, W], those rows of the query map (any memory format).
            key: [B, D, h, w]. value: [B, C, h, w].
            out_height: H, the height of the whole output.
            out: [B, C, r, W] to write into (rows of a larger output), or None.
            cache: kept by the caller across the bands of one output: a row of cells split
                over several bands gathers its windows once.

        Returns:
            [B, C, r, W] (``out`` when given).
        """
        batch, qk_dim, n_rows, out_w = query.shape
        value_dim, h, w = value.shape[1:]
        head_qk, head_v = qk_dim // num_heads, value_dim // num_heads
        rows = axis_layout(out_height, h, kernel_size, query.device)
        cols = axis_layout(out_w, w, kernel_size, query.device)
        kh, kw = rows.window.shape[1], cols.window.shape[1]
        window = kh * kw
        problem = AttentionProblem.of(query, value, (out_height, out_w), (h, w), num_heads, kernel_size)
        fixed = 2 * batch * w * window * (qk_dim + value_dim) * query.element_size()
        chunk_rows = _rows_per_chunk(problem, w * cols.group, window, fixed, max_chunk_bytes)
        scale = 1.0 / math.sqrt(head_qk)
        # under autocast the products run in its dtype (bmm's out= form is not cast by autocast)
        dtype = reduced_dtype(query.device.type) or torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)

        k = key.reshape(batch, num_heads, head_qk, h, w)
        v = value.reshape(batch, num_heads, head_v, h, w)
        if out is None:
            out = query.new_empty(batch, value_dim, n_rows, out_w, dtype=torch.result_type(query, value))
        scratch: list[torch.Tensor] = []
        first = min(h - 1, max(0, bisect.bisect_right(rows.bounds, row0) - 1))
        with autocast_off(query.device.type):  # the dtypes are set here, not by autocast
            for i in range(first, h):
                ra, rb = max(row0, rows.bounds[i]), min(row0 + n_rows, rows.bounds[i + 1])
                if rows.bounds[i] >= row0 + n_rows:
                    break
                if rb <= ra:
                    continue
                k_win, v_win = _cell_row_windows(k, v, rows.window[i], cols.window, scale, cache, i, dtype)
                for c0 in range(ra, rb, chunk_rows):
                    c1 = min(rb, c0 + chunk_rows)
                    m = c1 - c0
                    q = query[:, :, c0 - row0:c1 - row0].reshape(batch, num_heads, head_qk, m, out_w)
                    if not cols.regular:
                        q = q.index_select(4, cols.members)
                    # [B, heads, w, m, group, d]: the queries of each cell, cell by cell
                    q = q.reshape(batch, num_heads, head_qk, m, w, cols.group).permute(0, 1, 4, 3, 5, 2)
                    q = q.reshape(batch * num_heads * w, m * cols.group, head_qk).to(dtype)
                    weights = _softmax_logits(q, k_win, scratch)
                    # values times weights, transposed: [B*heads*w, dv, m*group], so that the copy
                    # to the output moves runs of ``group`` pixels rather than single values
                    mixed = torch.bmm(v_win, weights.transpose(1, 2)).view(batch, num_heads, w, head_v, m, cols.group)
                    target = out[:, :, c0 - row0:c1 - row0].view(batch, num_heads, head_v, m, out_w)
                    if cols.regular:
                        target.view(batch, num_heads, head_v, m, w, cols.group).copy_(mixed.permute(0, 1, 3, 4, 2, 5))
                    else:
                        flat = mixed.permute(0, 1, 3, 4, 2, 5).reshape(batch, num_heads, head_v, m, w * cols.group)
                        target.copy_(flat.index_select(4, cols.flat_slot))
        return out
