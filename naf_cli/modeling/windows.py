"""Pure index helpers for cross-scale neighborhood attention.

An output axis of length ``n_out`` covers a low-resolution axis of length ``n_low``.
Output position ``p`` falls into low-resolution cell ``floor(p * n_low / n_out)``: this is
the source index of nearest-neighbour resizing, computed in exact integer arithmetic, and
equals ``p // s`` for an integer ratio ``s``.
"""

from __future__ import annotations

import torch


def cell_of(n_out: int, n_low: int) -> torch.Tensor:
    """Low-resolution cell of every output position: LongTensor [n_out]."""
    return torch.arange(n_out, dtype=torch.long) * n_low // n_out


def cell_bounds(n_out: int, n_low: int) -> torch.Tensor:
    """First output position of each cell, plus ``n_out`` at the end: LongTensor [n_low + 1].

    Cell ``i`` owns output positions ``[bounds[i], bounds[i + 1])``, which is
    ``[ceil(i * n_out / n_low), ceil((i + 1) * n_out / n_low))``; a cell may own none
    when ``n_out < n_low``.
    """
    i = torch.arange(n_low + 1, dtype=torch.long)
    return (i * n_out + n_low - 1) // n_low


def window_size(n_low: int, kernel_size: int) -> int:
    """Window length along an axis: ``kernel_size``, or the whole axis when it is shorter."""
    return min(kernel_size, n_low)


def window_start(n_low: int, kernel_size: int) -> torch.Tensor:
    """First low-resolution index of the window of each cell: LongTensor [n_low].

    ``clamp(i - k // 2, 0, n_low - k)``: windows shift inward at the border and are never
    truncated.
    """
    k = window_size(n_low, kernel_size)
    i = torch.arange(n_low, dtype=torch.long)
    return (i - kernel_size // 2).clamp(0, n_low - k)


def window_index(n_low: int, kernel_size: int) -> torch.Tensor:
    """Low-resolution indices of each cell's window: LongTensor [n_low, window_size]."""
    k = window_size(n_low, kernel_size)
    return window_start(n_low, kernel_size)[:, None] + torch.arange(k, dtype=torch.long)


def group_index(n_out: int, n_low: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Output positions grouped by cell, padded to the largest group.

    Returns ``(members, slot)``:
    - ``members`` [n_low, m]: the output positions of cell ``i`` in its first slots; the
      padding slots repeat a valid position (clamped to ``n_out - 1``) and are never read back.
    - ``slot`` [n_out]: where output position ``p`` sits inside its cell's group, so the
      result for ``p`` is at ``[cell_of(p), slot[p]]``.
    """
    bounds = cell_bounds(n_out, n_low)
    m = int((bounds[1:] - bounds[:-1]).max().clamp(min=1))
    members = (bounds[:-1, None] + torch.arange(m, dtype=torch.long)).clamp(max=n_out - 1)
    slot = torch.arange(n_out, dtype=torch.long) - bounds[cell_of(n_out, n_low)]
    return members, slot
