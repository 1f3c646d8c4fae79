"""Brute-force NAF attention written straight from the specification, for tests only.

One output position at a time: find its low-resolution cell, its k x k window, softmax
over the window, weighted sum of the feature vectors. Slow by design.
"""

from __future__ import annotations

import math

import torch


def window_rows(cell: int, n_low: int, k: int) -> range:
    if n_low < k:  # the window covers the whole axis
        return range(n_low)
    start = min(max(cell - k // 2, 0), n_low - k)
    return range(start, start + k)


def brute_force_attention(query, key, value, num_heads: int, kernel_size: int):
    """query [B, D, H, W], key [B, D, h, w], value [B, C, h, w] -> [B, C, H, W], in float64."""
    query, key, value = query.double(), key.double(), value.double()
    batch, dim, out_h, out_w = query.shape
    channels, h, w = value.shape[1:]
    dq, dv = dim // num_heads, channels // num_heads
    out = torch.zeros(batch, channels, out_h, out_w, dtype=torch.float64)
    for b in range(batch):
        for py in range(out_h):
            cy = math.floor(py * h / out_h)
            rows = window_rows(cy, h, kernel_size)
            for px in range(out_w):
                cx = math.floor(px * w / out_w)
                cols = window_rows(cx, w, kernel_size)
                for n in range(num_heads):
                    q = query[b, n * dq:(n + 1) * dq, py, px]
                    logits, vectors = [], []
                    for r in rows:
                        for c in cols:
                            logits.append(torch.dot(q, key[b, n * dq:(n + 1) * dq, r, c]) / math.sqrt(dq))
                            vectors.append(value[b, n * dv:(n + 1) * dv, r, c])
                    weights = torch.softmax(torch.stack(logits), dim=0)
                    out[b, n * dv:(n + 1) * dv, py, px] = (weights[:, None] * torch.stack(vectors)).sum(0)
    return out


def rope_reference(x, base: float = 100.0, num_heads: int = 4):
    """Axial RoPE from the spec, position by position, on [B, D, H, W] (inference: no jitter)."""
    x = x.double()
    _, dim, height, width = x.shape
    head_dim = dim // num_heads
    n_periods = head_dim // 4
    periods = [base ** (2 * i / (head_dim // 2)) for i in range(n_periods)]
    out = torch.empty_like(x)
    for r in range(height):
        y = 2 * (r + 0.5) / height - 1
        for c in range(width):
            xc = 2 * (c + 0.5) / width - 1
            angles = [2 * math.pi * y / p for p in periods] + [2 * math.pi * xc / p for p in periods]
            theta = torch.tensor(angles + angles, dtype=torch.float64)
            for n in range(num_heads):
                v = x[:, n * head_dim:(n + 1) * head_dim, r, c]
                half = head_dim // 2
                rotated = torch.cat((-v[:, half:], v[:, :half]), dim=1)
                out[:, n * head_dim:(n + 1) * head_dim, r, c] = v * theta.cos() + rotated * theta.sin()
    return out
