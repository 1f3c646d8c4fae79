"""Equality with the reference route: nearest-resize K and V to the output size, then
neighborhood attention with dilation = ratio (natten.na2d)."""

import pytest
import torch
import torch.nn.functional as F

from naf_cli.modeling.attention import cross_scale_neighborhood_attention

natten = pytest.importorskip("natten")
pytestmark = [
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
    pytest.mark.filterwarnings("ignore:return_lse is deprecated"),
]


def natten_route(q, k, v, num_heads, kernel_size, ratio):
    b, d, big_h, big_w = q.shape
    c = v.shape[1]
    k_up = F.interpolate(k, size=(big_h, big_w), mode="nearest")
    v_up = F.interpolate(v, size=(big_h, big_w), mode="nearest")

    def heads_last(t, dim):  # [B, D, H, W] -> [B, H, W, heads, D / heads]
        return t.reshape(b, num_heads, dim // num_heads, big_h, big_w).permute(0, 3, 4, 1, 2).contiguous()

    out = natten.na2d(heads_last(q, d), heads_last(k_up, d), heads_last(v_up, c), kernel_size=kernel_size, dilation=ratio)
    return out.permute(0, 3, 4, 1, 2).reshape(b, c, big_h, big_w)


@pytest.mark.parametrize("b,h,w,ratio", [(1, 9, 9, 2), (2, 10, 12, 3), (1, 12, 9, 4)])
def test_matches_natten_with_dilation(b, h, w, ratio):
    g = torch.Generator().manual_seed(ratio)
    d, c = 64, 64  # natten's CPU backend wants equal query and value head sizes
    q = torch.randn(b, d, h * ratio, w * ratio, generator=g)
    k = torch.randn(b, d, h, w, generator=g)
    v = torch.randn(b, c, h, w, generator=g)
    ours = cross_scale_neighborhood_attention(q, k, v, num_heads=4, kernel_size=9)
    ref = natten_route(q, k, v, num_heads=4, kernel_size=9, ratio=ratio)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
