import pytest
import torch
from reference import brute_force_attention
from torch.utils._python_dispatch import TorchDispatchMode

from naf_cli.modeling.attention import cross_scale_neighborhood_attention

CASES = [
    # (B, C, h, w, H, W)
    (2, 8, 4, 4, 16, 16),      # integer ratio 4, grid smaller than the kernel
    (1, 12, 10, 11, 20, 33),   # integer ratios 2 and 3, non-square, borders
    (2, 8, 12, 10, 36, 50),    # ratio 3 and 5 with windows shifting at the borders
    (1, 8, 6, 7, 17, 23),      # non-integer ratios
    (2, 4, 11, 9, 25, 40),     # non-integer ratios, grid larger than the kernel
    (1, 8, 9, 12, 5, 7),       # output smaller than the grid
    (1, 4, 1, 1, 3, 2),        # one cell
    (1, 4, 2, 13, 9, 30),      # one axis below the kernel, the other above
]


def _inputs(b, c, h, w, big_h, big_w, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, dim, big_h, big_w, generator=g)
    k = torch.randn(b, dim, h, w, generator=g)
    v = torch.randn(b, c, h, w, generator=g)
    return q, k, v


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("budget", [512 * 2**20, 1])
def test_matches_brute_force(case, budget):
    q, k, v = _inputs(*case)
    out = cross_scale_neighborhood_attention(q, k, v, num_heads=4, kernel_size=9, max_chunk_bytes=budget)
    ref = brute_force_attention(q, k, v, num_heads=4, kernel_size=9)
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", [3, 5, 15])
def test_other_kernel_sizes(kernel):
    q, k, v = _inputs(1, 8, 8, 20, 24, 50)
    out = cross_scale_neighborhood_attention(q, k, v, 4, kernel)
    torch.testing.assert_close(out.double(), brute_force_attention(q, k, v, 4, kernel), atol=1e-5, rtol=1e-5)


def test_gradients_match_brute_force():
    q, k, v = (t.double().requires_grad_() for t in _inputs(1, 8, 5, 6, 13, 17))
    weights = torch.randn(1, 8, 13, 17, dtype=torch.float64)
    (cross_scale_neighborhood_attention(q, k, v, 4, 3) * weights).sum().backward()
    ours = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (brute_force_attention(q, k, v, 4, 3) * weights).sum().backward()
    for mine, ref in zip(ours, (q.grad, k.grad, v.grad), strict=True):
        torch.testing.assert_close(mine, ref, atol=1e-9, rtol=1e-7)


def test_output_is_convex_combination_of_values():
    q, k, _ = _inputs(2, 8, 6, 6, 24, 24)
    constant = torch.full((2, 8, 6, 6), 3.5)
    out = cross_scale_neighborhood_attention(q, k, constant, 4, 9)
    torch.testing.assert_close(out, torch.full_like(out, 3.5))


def test_rejects_channels_not_divisible_by_heads():
    q, k, v = _inputs(1, 6, 4, 4, 8, 8)
    with pytest.raises(ValueError, match="divisible"):
        cross_scale_neighborhood_attention(q, k, v, num_heads=4, kernel_size=3)


class LargestTemporary(TorchDispatchMode):
    """Records the largest tensor any non-view op creates (the preallocated output aside)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        is_view = any(r.alias_info is not None for r in func._schema.returns)
        if not is_view and "new_empty" not in str(func):
            for t in result if isinstance(result, (tuple, list)) else [result]:
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel() * t.element_size())
        return result


@pytest.mark.parametrize("ratio", [4, 16, 32])
def test_temporaries_stay_under_budget_at_any_ratio(ratio):
    h = w = 12
    budget = 4 * 2**20
    q, k, v = _inputs(1, 64, h, w, h * ratio, w * ratio, dim=256)
    mode = LargestTemporary()
    with mode:
        out = cross_scale_neighborhood_attention(q, k, v, 4, 9, max_chunk_bytes=budget)
    assert out.shape == (1, 64, h * ratio, w * ratio)
    assert mode.largest <= budget, f"a temporary of {mode.largest} bytes exceeds the {budget}-byte budget"
