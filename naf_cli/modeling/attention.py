"""Cross-scale neighborhood attention, computed cell by cell.

Every output position attends to the ``k x k`` window of low-resolution keys around the
low-resolution cell it falls into (see ``windows.py`` for which cell and which window).
All output positions of one cell share that window, so the windows are gathered once per
cell, at low resolution, and each cell's queries attend to them with one batched
``scaled_dot_product_attention``. Keys and values are never built at the output
resolution: their memory depends on ``h x w``, not on the upsampling ratio. Rows of cells
are processed in chunks so the temporaries stay under a byte budget; at large ratios a row
of cells is split further by output rows (one output row is the smallest unit).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from naf_cli.modeling import windows

DEFAULT_CHUNK_BYTES = 512 * 2**20


def _chunk_bytes(
    cell_rows: int, slot_rows: int, batch: int, w: int, group_w: int, window: int,
    qk_dim: int, value_dim: int, num_heads: int, element_size: int,
) -> int:
    """Temporaries of ``slot_rows`` output rows in each of ``cell_rows`` rows of cells.

    Key and value windows depend on the cells only; queries, logits and results on the
    output rows taken from each cell.
    """
    windows_kv = cell_rows * window * (qk_dim + value_dim)
    per_query = qk_dim + num_heads * window + value_dim
    queries = cell_rows * slot_rows * group_w * per_query
    # x2: permutes and the final gather each make one copy
    return 2 * batch * w * (windows_kv + queries) * element_size


def plan_chunks(
    h: int, group_h: int, max_chunk_bytes: int, *, batch: int, w: int, group_w: int, window: int,
    qk_dim: int, value_dim: int, num_heads: int, element_size: int,
) -> list[tuple[int, int, int, int]]:
    """Split the work into ``(i0, i1, a0, a1)``: cell rows ``[i0, i1)``, group rows ``[a0, a1)``.

    Whole rows of cells are taken together while they fit the budget; a row of cells that
    alone exceeds it (a large ratio) is split by output rows inside its cells, down to one
    output row per chunk.
    """
    sizes = (batch, w, group_w, window, qk_dim, value_dim, num_heads, element_size)
    full_row = _chunk_bytes(1, group_h, *sizes)
    if full_row <= max_chunk_bytes:
        step = max(1, min(h, max_chunk_bytes // full_row))
        return [(i0, min(h, i0 + step), 0, group_h) for i0 in range(0, h, step)]
    fixed = _chunk_bytes(1, 0, *sizes)
    per_slot_row = _chunk_bytes(1, 1, *sizes) - fixed
    slots = max(1, min(group_h, (max_chunk_bytes - fixed) // max(per_slot_row, 1)))
    return [(i, i + 1, a0, min(group_h, a0 + slots)) for i in range(h) for a0 in range(0, group_h, slots)]


def cross_scale_neighborhood_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    num_heads: int,
    kernel_size: int,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """Attend from every output position to its low-resolution neighborhood.

    Args:
        query: [B, D, H, W] queries at the output resolution.
        key: [B, D, h, w] keys at the low resolution.
        value: [B, C, h, w] values at the low resolution; head ``n`` uses channels
            ``[n * C / heads, (n + 1) * C / heads)``.
        num_heads: D and C are split into this many heads.
        kernel_size: window side ``k`` (the whole axis where it is shorter).
        max_chunk_bytes: budget for the temporaries of one chunk of cell rows.

    Returns:
        [B, C, H, W]: each output vector is a convex combination of the value vectors
        in its window.
    """
    batch, qk_dim, out_h, out_w = query.shape
    _, value_dim, h, w = value.shape
    if key.shape != (batch, qk_dim, h, w):
        raise ValueError(f"key has shape {tuple(key.shape)}, expected {(batch, qk_dim, h, w)}")
    if qk_dim % num_heads or value_dim % num_heads:
        raise ValueError(
            f"query channels ({qk_dim}) and value channels ({value_dim}) must both be "
            f"divisible by the number of heads ({num_heads})"
        )
    device = query.device
    head_qk, head_v = qk_dim // num_heads, value_dim // num_heads

    rows, row_slot = (t.to(device) for t in windows.group_index(out_h, h))
    cols, col_slot = (t.to(device) for t in windows.group_index(out_w, w))
    row_cell = windows.cell_of(out_h, h).to(device)
    col_cell = windows.cell_of(out_w, w).to(device)
    row_bounds = windows.cell_bounds(out_h, h)
    win_rows = windows.window_index(h, kernel_size).to(device)
    win_cols = windows.window_index(w, kernel_size).to(device)
    group_h, group_w = rows.shape[1], cols.shape[1]
    kh, kw = win_rows.shape[1], win_cols.shape[1]

    q = query.reshape(batch, num_heads, head_qk, out_h, out_w)
    k = key.reshape(batch, num_heads, head_qk, h, w)
    v = value.reshape(batch, num_heads, head_v, h, w)

    chunks = plan_chunks(
        h, group_h, max_chunk_bytes, batch=batch, w=w, group_w=group_w, window=kh * kw,
        qk_dim=qk_dim, value_dim=value_dim, num_heads=num_heads, element_size=query.element_size(),
    )
    out = query.new_empty(batch, value_dim, out_h, out_w, dtype=value.dtype)
    for i0, i1, a0, a1 in chunks:
        n, slots = i1 - i0, a1 - a0
        # output rows produced here: those of cells [i0, i1) that sit in group rows [a0, a1)
        r0 = int(row_bounds[i0]) + (a0 if n == 1 else 0)
        r1 = min(int(row_bounds[i1]), int(row_bounds[i0]) + a1) if n == 1 else int(row_bounds[i1])
        if r1 <= r0:
            continue
        # windows of keys/values of these cells: [B, heads, d, n, kh, w, kw]
        wr = win_rows[i0:i1, :, None, None]
        wc = win_cols[None, None, :, :]
        k_win = k[:, :, :, wr, wc].permute(0, 1, 3, 5, 4, 6, 2).reshape(batch * num_heads, n * w, kh * kw, head_qk)
        v_win = v[:, :, :, wr, wc].permute(0, 1, 3, 5, 4, 6, 2).reshape(batch * num_heads, n * w, kh * kw, head_v)
        # queries grouped by cell: [B, heads, d, n, slots, w, group_w]
        q_grp = q[:, :, :, rows[i0:i1, a0:a1, None, None], cols[None, None, :, :]]
        q_grp = q_grp.permute(0, 1, 3, 5, 4, 6, 2).reshape(batch * num_heads, n * w, slots * group_w, head_qk)
        attended = F.scaled_dot_product_attention(q_grp, k_win, v_win, scale=1.0 / math.sqrt(head_qk))
        attended = attended.reshape(batch, num_heads, n, w, slots, group_w, head_v)
        # back to output positions: [B, heads, r1 - r0, W, head_v]
        local_cell = (row_cell[r0:r1] - i0)[:, None]
        local_slot = (row_slot[r0:r1] - a0)[:, None]
        picked = attended[:, :, local_cell, col_cell[None, :], local_slot, col_slot[None, :]]
        out[:, :, r0:r1] = picked.permute(0, 1, 4, 2, 3).reshape(batch, value_dim, r1 - r0, out_w)
    return out
