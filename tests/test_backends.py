"""Every attention backend against the brute-force reference written from the spec, and the chooser."""

import pytest
import torch
from reference import brute_force_attention

from naf_cli.errors import UnknownNameError
from naf_cli.modeling import NAF
from naf_cli.modeling.attention import (
    BACKENDS,
    AttentionProblem,
    BackendError,
    choose_backend,
    cross_scale_neighborhood_attention,
    refusals,
)
from naf_cli.modeling.attention.cells import axis_layout

pytestmark = [
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
    pytest.mark.filterwarnings("ignore:return_lse is deprecated"),
]

CASES = [
    # (B, C, h, w, H, W)
    (2, 8, 10, 11, 20, 33),    # integer ratios 2 and 3, windows inside the grid
    (1, 12, 9, 9, 36, 27),     # ratios 4 and 3, grid equal to the kernel
    (2, 8, 12, 10, 36, 50),    # borders shift windows inward
    (1, 8, 6, 7, 17, 23),      # non-integer ratios
    (1, 4, 4, 4, 16, 16),      # grid smaller than the kernel
    (1, 8, 9, 12, 5, 7),       # output smaller than the grid
    (2, 8, 20, 17, 20, 17),    # same size (the restoration variant): blocks, with a partial last block
    (1, 4, 6, 30, 6, 30),      # same size, fewer rows than the kernel
]


def _inputs(b, c, h, w, big_h, big_w, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, dim, big_h, big_w, generator=g), torch.randn(b, dim, h, w, generator=g),
            torch.randn(b, c, h, w, generator=g))


def _problem(q, v, needs_grad=False):
    return AttentionProblem.of(q, v, tuple(q.shape[-2:]), tuple(v.shape[-2:]), 4, 9, needs_grad)


@pytest.mark.parametrize("name", list(BACKENDS))
@pytest.mark.parametrize("case", CASES)
def test_every_backend_matches_brute_force(name, case):
    q, k, v = _inputs(*case)
    reason = refusals(_problem(q, v))[name]
    if reason is not None:
        with pytest.raises(BackendError, match=f"'{name}' cannot run here"):
            cross_scale_neighborhood_attention(q, k, v, 4, 9, backend=name)
        return
    out = cross_scale_neighborhood_attention(q, k, v, 4, 9, backend=name)
    if case not in _EXPECTED:  # the brute force is slow: once per case for every backend
        _EXPECTED[case] = brute_force_attention(q, k, v, 4, 9)
    torch.testing.assert_close(out.double(), _EXPECTED[case], atol=1e-5, rtol=1e-5)


_EXPECTED: dict[tuple[int, ...], torch.Tensor] = {}


def test_refusals_say_why():
    q, k, v = _inputs(1, 8, 6, 7, 17, 23)
    reasons = refusals(_problem(q, v))
    assert reasons["cells"] is None
    assert "not a whole number" in reasons["reference"]
    q, k, v = _inputs(1, 8, 4, 4, 16, 16)
    assert "smaller than the 9x9 window" in (refusals(_problem(q, v))["natten"] or "not installed")
    q, k, v = _inputs(1, 8, 10, 10, 20, 20)
    assert "no backward pass on CPU" in (refusals(_problem(q, v, needs_grad=True))["natten"] or "no backward pass on CPU")


def test_chooser_prefers_cells_and_honours_a_name():
    q, k, v = _inputs(1, 8, 10, 10, 20, 20)
    assert choose_backend(_problem(q, v)).name == "cells"
    assert choose_backend(_problem(q, v), "reference").name == "reference"
    with pytest.raises(UnknownNameError, match="known backends: blocks, cells"):
        choose_backend(_problem(q, v), "fused")
    with pytest.raises(UnknownNameError, match="unknown attention backend 'fused'"):
        NAF(attention_backend="fused")


def test_naf_runs_on_a_named_backend_and_falls_back_for_gradients():
    torch.manual_seed(0)
    image, features = torch.rand(1, 3, 40, 40), torch.randn(1, 8, 10, 10)
    cells, reference = NAF(attention_backend="cells").eval(), NAF(attention_backend="reference").eval()
    reference.load_state_dict(cells.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(cells(image, features, (20, 20)), reference(image, features, (20, 20)), atol=1e-5, rtol=1e-5)
        with pytest.raises(BackendError, match="not a whole number"):
            reference(image, features, (25, 21))
    # with gradients NAF takes the module path; the reference backend has autograd too
    image.requires_grad_()
    reference(image, features, (20, 20)).sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all()


def test_blocks_backend_gradients_match_the_reference():
    """Training the restoration variant backpropagates through ``blocks``: its gradients equal the reference's."""
    q, k, v = _inputs(2, 12, 19, 21, 19, 21)
    grads = {}
    for name in ("blocks", "reference"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = cross_scale_neighborhood_attention(*leaves, 4, 15, backend=name)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[name] = [t.grad for t in leaves]
    for got, expected in zip(grads["blocks"], grads["reference"], strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert choose_backend(_problem(q, v)).name == "blocks"


def test_blocks_in_chunks_and_bands_equal_the_brute_force_at_kernel_15():
    """The restoration variant's kernel: rows taken a row of blocks at a time (the inference
    chunks), and a band of rows starting mid-map (``forward_bands``), with partial last blocks."""
    q, k, v = _inputs(1, 8, 21, 19, 21, 19)
    expected = brute_force_attention(q, k, v, 4, 15)
    chunked = cross_scale_neighborhood_attention(q, k, v, 4, 15, max_chunk_bytes=1, backend="blocks")
    torch.testing.assert_close(chunked.double(), expected, atol=1e-5, rtol=1e-5)
    band = BACKENDS["blocks"].attend(q[:, :, 5:17], k, v, row0=5, out_height=21, num_heads=4, kernel_size=15,
                                     max_chunk_bytes=1)
    torch.testing.assert_close(band.double(), expected[:, :, 5:17], atol=1e-5, rtol=1e-5)


def test_index_tensors_are_cached_per_sizes_kernel_and_device():
    a = axis_layout(48, 12, 9, torch.device("cpu"))
    assert axis_layout(48, 12, 9, torch.device("cpu")) is a
    assert axis_layout(48, 12, 7, torch.device("cpu")) is not a
    assert a.regular and a.group == 4
    odd = axis_layout(50, 12, 9, torch.device("cpu"))
    assert not odd.regular and odd.group == 5
    # every output position appears exactly once among the members, at its flat slot
    assert torch.equal(odd.members[odd.flat_slot], torch.arange(50))


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(BACKENDS))
def test_backends_on_cuda_match_cpu(name):
    q, k, v = _inputs(2, 8, 12, 10, 36, 50)
    if refusals(AttentionProblem.of(q.cuda(), v.cuda(), (36, 50), (12, 10), 4, 9))[name] is not None:
        pytest.skip(f"{name} cannot run this on CUDA")
    expected = cross_scale_neighborhood_attention(q, k, v, 4, 9, backend="cells")
    got = cross_scale_neighborhood_attention(q.cuda(), k.cuda(), v.cuda(), 4, 9, backend=name)
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("name", "sizes"), [("cells", (1, 8, 7, 9, 29, 37)), ("reference", (1, 8, 7, 9, 28, 36)),
                                              ("blocks", (1, 8, 13, 19, 13, 19))])
def test_index_tensors_first_built_under_inference_mode_serve_training(name, sizes):
    """Validation (inference mode) then a training step of the same sizes: the cached index
    tensors must not be inference tensors, which autograd cannot save for backward."""
    q, k, v = _inputs(*sizes, seed=3)
    with torch.inference_mode():
        cross_scale_neighborhood_attention(q, k, v, 4, 5, backend=name)
    q.requires_grad_(True)
    out = cross_scale_neighborhood_attention(q, k, v, 4, 5, backend=name)
    out.square().sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_natten_without_compiled_kernels_is_refused_for_large_outputs_on_any_device():
    from dataclasses import replace

    from naf_cli.modeling.attention import natten_route

    if natten_route.importlib.util.find_spec("natten") is None or natten_route._compiled():
        pytest.skip("needs natten without its compiled kernels (pure Python, as on PyPI without CUDA)")
    problem = AttentionProblem(batch=1, qk_dim=256, value_dim=384, out_size=(448, 448), low_size=(28, 28), num_heads=4,
                               kernel_size=9, device_type="cpu", element_size=4, needs_grad=False)
    for device_type in ("cpu", "cuda"):
        assert "dense" in str(BACKENDS["natten"].refusal(replace(problem, device_type=device_type)))
