"""The band API: NAF's output computed in horizontal bands equals the unbanded module path,
piece by piece (encoder in bands, RoPE of rows, pooling of rows), and stays in a memory budget."""

import pytest
import torch
import torch.nn.functional as F
from test_attention import LargestTemporary

from naf_cli.checkpoints import load_naf, packaged_checkpoint
from naf_cli.modeling import NAF
from naf_cli.modeling.attention import cross_scale_neighborhood_attention
from naf_cli.modeling.encoder_bands import encode_in_bands
from naf_cli.modeling.queries import pool_rows
from naf_cli.modeling.rope import RoPE2d


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = NAF(**kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the init, so GroupNorm's affine matters
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _shipped(**kwargs):
    """The shipped checkpoint: realistic logit scales for the 1e-5 comparisons."""
    model = NAF(**kwargs).eval()
    model.load_state_dict(load_naf(packaged_checkpoint()).state_dict())
    return model


def _module_path(model, image, features, size):
    """Encoder -> pooled queries -> RoPE -> keys -> attention, all on whole maps (the training path)."""
    with torch.no_grad():
        q, k = model.queries_and_keys(image, tuple(features.shape[-2:]), size)
        return cross_scale_neighborhood_attention(q, k, features, 4, 9)


@pytest.mark.parametrize("shape", [(2, 3, 37, 41), (1, 3, 64, 48), (1, 3, 2, 9), (1, 3, 5, 2)])
@pytest.mark.parametrize("band_rows", [1, 3, 16, 1000])
def test_encoder_in_bands_equals_encoder(shape, band_rows):
    model = _model()
    image = torch.rand(*shape)
    with torch.no_grad():
        expected = [model.image_encoder.encode(image.contiguous(memory_format=f))
                    for f in (torch.contiguous_format, torch.channels_last)]
        got = encode_in_bands(model.image_encoder, image, band_rows)
        exact = model.double().image_encoder.encode(image.double())
    assert got.is_contiguous(memory_format=torch.channels_last)
    # as close to the float64 result as the float32 module path is, or closer; the module path
    # in either memory format, since the kernels round differently per format (on AVX-512
    # oneDNN's channels_last convolutions err about 3 times more than its NCHW ones)
    module_error = max(float((e.double() - exact).abs().max()) for e in expected)
    assert float((got.double() - exact).abs().max()) <= 2 * module_error + 1e-6


def test_rope_of_rows_equals_rope_of_the_map():
    rope = RoPE2d().eval()
    x = torch.randn(2, 256, 11, 7)
    whole = rope(x)
    for r0, r1 in [(0, 11), (0, 1), (3, 8), (10, 11)]:
        torch.testing.assert_close(rope.rotate_rows(x[:, :, r0:r1], r0, 11), whole[:, :, r0:r1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("n_in,n_out", [(10, 10), (7, 23), (23, 7), (448, 2016), (5, 1)])
def test_pooled_rows_equal_adaptive_pooling(n_in, n_out):
    x = torch.randn(1, 4, n_in, 3)
    whole = F.adaptive_avg_pool2d(x, (n_out, 3))
    for r0, r1 in [(0, n_out), (n_out // 2, n_out)]:
        torch.testing.assert_close(pool_rows(x, r0, r1, n_out), whole[:, :, r0:r1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("low,size", [((6, 5), (24, 20)), ((8, 8), (64, 64)), ((6, 5), (19, 26)), ((10, 9), (230, 170)), ((9, 12), (5, 7))])
@pytest.mark.parametrize("band_rows", [1, 5, 16, None])
def test_bands_equal_the_unbanded_path(low, size, band_rows):
    model = _shipped()
    image, features = torch.rand(2, 3, 60, 52), torch.randn(2, 8, *low)
    expected = _module_path(model, image, features, size)
    bands = list(model.forward_bands(image, features, size, band_rows=band_rows))
    assert [r0 for r0, _, _ in bands] == sorted(r0 for r0, _, _ in bands)
    assert bands[0][0] == 0 and bands[-1][1] == size[0]
    assert all(b[1] == a[0] for a, b in zip(bands[1:], bands[:-1], strict=True))
    assert all(rows.shape == (2, 8, r1 - r0, size[1]) for r0, r1, rows in bands)
    torch.testing.assert_close(torch.cat([rows for _, _, rows in bands], dim=2), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(image, features, size), expected, atol=1e-5, rtol=1e-5)


def test_iterating_bands_leaves_gradient_mode_alone():
    model = _model()
    image, features = torch.rand(1, 3, 32, 32), torch.randn(1, 8, 4, 4)
    for _ in model.forward_bands(image, features, (16, 16), band_rows=4):
        assert torch.is_grad_enabled()


def test_queries_recomputed_when_they_exceed_the_budget():
    """A query map above max_chunk_bytes is made again in the second pass, with the same result."""
    image, features = torch.rand(1, 3, 40, 40), torch.randn(1, 8, 5, 5)
    kept = _shipped()(image, features, (40, 40))
    recomputed = _shipped(max_chunk_bytes=1)(image, features, (40, 40))
    torch.testing.assert_close(recomputed, kept, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("ratio", [32, 64])
def test_bands_stay_under_a_budget_at_any_ratio(ratio):
    """No tensor made while iterating bands grows with the output: the largest is bounded by
    the band and the encoder at the guidance size, far below the output."""
    budget = 2**20
    model = _model(max_chunk_bytes=budget)
    image, features = torch.rand(1, 3, 24, 24), torch.randn(1, 64, 6, 6)
    size = (6 * ratio, 6 * ratio)
    output_bytes = 64 * size[0] * size[1] * 4
    mode = LargestTemporary()
    with mode:
        for _r0, _r1, rows in model.forward_bands(image, features, size, band_rows=2):
            del rows
    band = 2 * size[1] * (256 + 64) * 4 * 2
    column_pooled = size[0] * 6 * 256 * 4  # queries pooled over columns, all rows: what the keys come from
    assert mode.largest <= max(budget, band, column_pooled), (mode.largest, output_bytes)
    assert mode.largest * 4 < output_bytes
