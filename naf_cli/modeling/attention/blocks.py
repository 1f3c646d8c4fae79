"""The ``blocks`` backend: same-size neighborhood attention (output size = key size, the
restoration variant) as dense attention over blocks, masked.

At ratio 1 every output pixel is its own cell, so the cell-grouped backend gathers one
``k x k`` window per pixel and multiplies 1-row matrices: slow. Here the output is cut
into blocks of ``BLOCK x BLOCK`` pixels; the windows of a block's pixels all lie in one
region of ``(BLOCK + k - 1)^2`` keys, so each block is one matrix product of its queries
with that region, and a mask keeps each query to its own window (shifted inward at the
borders, as everywhere). About twice the multiply-adds of the windows alone, all in large
matrix products, and plain autograd for training.
"""

from __future__ import annotations

import torch

from naf_cli.modeling import windows
from naf_cli.modeling.attention.problem import AttentionProblem
from naf_cli.modeling.index_cache import index_cache

BLOCK = 8


@index_cache(32)
def axis_blocks(n: int, row0: int, count: int, kernel_size: int, block: int = BLOCK) -> tuple[torch.Tensor, ...]:
    """Blocks along one axis of length ``n``, for positions ``[row0, row0 + count)``.

    Returns (all LongTensors):
    - ``members`` [nb, b]: the positions of each block (the last block is moved back to end
      at the last position, so it may overlap the one before);
    - ``region`` [nb, L]: the key positions each block's windows cover;
    - ``allowed`` [nb, b, L] (bool): key ``region[i, l]`` is in the window of ``members[i, j]``;
    - ``block_of``, ``slot`` [count]: where each position's result is among the blocks.
    """
    b = min(block, count)
    starts = torch.arange(row0, row0 + count, b).clamp(max=row0 + count - b)
    members = starts[:, None] + torch.arange(b)
    start = windows.window_start(n, kernel_size)
    k = windows.window_size(n, kernel_size)
    length = min(b + k - 1, n)
    first = torch.minimum(start[members[:, 0]], torch.tensor(n - length))
    region = first[:, None] + torch.arange(length)
    window_first = start[members]  # [nb, b]
    allowed = (region[:, None, :] >= window_first[..., None]) & (region[:, None, :] < window_first[..., None] + k)
    position = torch.arange(row0, row0 + count)
    block_of = ((position - row0) // b).clamp(max=len(starts) - 1)
    slot = position - starts[block_of]
    return members, region, allowed, block_of, slot


@index_cache(64)
def block_indices(
    height: int, width: int, row0: int, count: int, kernel_size: int, device: torch.device,
) -> tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat indices of the blocks of rows ``[row0, row0 + count)`` of a ``height x width`` map,
    on ``device`` (cached per device: no copy to the GPU per chunk).

    Returns ``(key_top, key_bottom, queries, keys, picks, mask)``:
    - the key rows ``[key_top, key_bottom)`` the blocks' regions cover;
    - ``queries`` [nby * nbx * a * c]: each block's pixels, as positions ``row * width + col``
      in the rows ``[row0, row0 + count)``;
    - ``keys`` [nby * nbx * L_r * L_c]: each block's region, positions in the key rows
      from ``key_top``;
    - ``picks`` [count * width]: where each pixel's result is among the blocks' results
      (overlapping last blocks are read once);
    - ``mask`` [nby, nbx, a * c, L_r * L_c] (bool): key allowed for query.
    """
    rows, row_region, row_allowed, row_block, row_slot = axis_blocks(height, row0, count, kernel_size)
    cols, col_region, col_allowed, col_block, col_slot = axis_blocks(width, 0, width, kernel_size)
    (nby, a), (nbx, c) = rows.shape, cols.shape
    key_top, key_bottom = int(row_region.min()), int(row_region.max()) + 1
    queries = ((rows - row0)[:, None, :, None] * width + cols[None, :, None, :]).reshape(-1)
    keys = ((row_region - key_top)[:, None, :, None] * width + col_region[None, :, None, :]).reshape(-1)
    block = row_block[:, None] * nbx + col_block[None, :]
    picks = (block * (a * c) + row_slot[:, None] * c + col_slot[None, :]).reshape(-1)
    mask = row_allowed[:, None, :, None, :, None] & col_allowed[None, :, None, :, None, :]
    mask = mask.reshape(nby, nbx, a * c, -1)
    return key_top, key_bottom, queries.to(device), keys.to(device), picks.to(device), mask.to(device)


def _heads_major(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, D, r, W] -> [B, heads, r * W, D / heads], contiguous: each position's head vector
    is one row, so gathering positions copies whole rows."""
    batch, dim, rows, width = x.shape
    return x.permute(0, 2, 3, 1).reshape(batch, rows * width, num_heads, dim // num_heads).transpose(1, 2).contiguous()


class BlocksBackend:
    """Masked dense attention per block of output pixels: ratio 1 only, any device, autograd."""

    name = "blocks"
    banded = True
    description = "same-size attention (restoration): blocks of 8x8 queries against their windows' union, masked"

    def refusal(self, problem: AttentionProblem) -> str | None:
        """Runs only when the output has the keys' size."""
        if problem.out_size != problem.low_size:
            return f"only for output size = key size (got {problem.out_size} from {problem.low_size})"
        return None

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
        row0: int, out_height: int, num_heads: int, kernel_size: int, max_chunk_bytes: int,
        out: torch.Tensor | None = None, cache: dict[str, object] | None = None,
    ) -> torch.Tensor:
        """Rows ``[row0, row0 + r)``: query [B, D, r, W], key [B, D, H, W], value [B, C, H, W] -> [B, C, r, W].

        Without autograd, block rows are taken a few at a time so the logits stay under
        ``max_chunk_bytes``.
        """
        batch, qk_dim, n_rows, width = query.shape
        value_dim, height = int(value.shape[1]), int(value.shape[2])
        result = out if out is not None else value.new_empty(batch, value_dim, n_rows, width)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        b_rows, b_cols = min(BLOCK, n_rows), min(BLOCK, width)
        n_block_cols = -(-width // b_cols)
        region = (b_rows + kernel_size - 1) * (b_cols + kernel_size - 1)
        # logits, their mask and the gathered keys of one row of blocks
        per_block_row = 4 * batch * num_heads * n_block_cols * b_rows * b_cols * region * query.element_size()
        step = n_rows if needs_grad else max(b_rows, (max_chunk_bytes // max(per_block_row, 1)) * b_rows)
        scale = (qk_dim // num_heads) ** -0.5
        pieces = []
        for start in range(0, n_rows, step):
            count = min(step, n_rows - start)
            key_top, key_bottom, q_index, kv_index, picks, mask = block_indices(
                height, width, row0 + start, count, kernel_size, query.device)
            nby, nbx = mask.shape[:2]
            # [B, heads, nby, nbx, a * c or L, D / heads]
            q = _heads_major(query[:, :, start:start + count], num_heads).index_select(2, q_index)
            k = _heads_major(key[:, :, key_top:key_bottom], num_heads).index_select(2, kv_index)
            v = _heads_major(value[:, :, key_top:key_bottom], num_heads).index_select(2, kv_index)
            q, k, v = (t.unflatten(2, (nby, nbx, -1)) for t in (q, k, v))
            # scaling the queries, not the logits: fewer multiplications
            logits = torch.matmul(q * scale, k.transpose(-1, -2))
            if needs_grad:
                logits = logits.masked_fill(~mask, float("-inf"))
            else:
                logits.masked_fill_(~mask, float("-inf"))
            mixed = torch.matmul(torch.softmax(logits, dim=-1), v)  # [B, heads, nby, nbx, a * c, C / heads]
            picked = mixed.flatten(2, 4).index_select(2, picks)  # [B, heads, count * W, C / heads]
            picked = picked.transpose(2, 3).reshape(batch, value_dim, count, width)
            if needs_grad:
                pieces.append(picked)
            else:
                result[:, :, start:start + count] = picked
        if needs_grad:
            return torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]
        return result
