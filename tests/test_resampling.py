"""The one antialiased resize: plain F.interpolate where the device can take it, the CPU where
PyTorch's CUDA kernel refuses the factor (it needs too much shared memory past ~94x)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from naf_cli.modeling.joint_bilateral import resize_guidance
from naf_cli.resampling import CUDA_MAX_SHRINK, needs_host, resize_antialiased


def _reference(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


@pytest.mark.parametrize("size", [(7, 10), (448, 672), (1000, 1500)])
def test_on_the_cpu_it_is_plain_antialiased_interpolation(size):
    images = torch.rand(2, 3, 896, 1344, generator=torch.Generator().manual_seed(0))
    assert torch.equal(resize_antialiased(images, size), _reference(images, size))


def test_only_cuda_shrinks_past_the_kernel_limit_go_to_the_host():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    # the JBU guidance of an x128 output (3584 px) shrunk to its 28-cell grid: the case that failed on an H200
    assert needs_host((1, 3, 3584, 3584), (28, 28), cuda)
    assert needs_host((1, 3, 896, 1344), (7, 10), cuda)  # naf eval x8: 128x
    assert not needs_host((1, 3, 3584, 3584), (28, 28), cpu)
    limit = CUDA_MAX_SHRINK * 28
    assert not needs_host((1, 3, limit, limit), (28, 28), cuda)
    assert needs_host((1, 3, limit + 1, 28), (28, 28), cuda)  # one axis past the limit is enough
    assert not needs_host((1, 3, 16, 16), (448, 448), cuda)  # enlarging never


def test_the_element_size_scales_the_limit():
    cuda = torch.device("cuda", 0)
    assert not needs_host((1, 3, 40 * 28, 40 * 28), (28, 28), cuda, element_size=4)
    assert needs_host((1, 3, 40 * 28, 40 * 28), (28, 28), cuda, element_size=8)  # float64: 32x
    assert not needs_host((1, 3, 100 * 28, 28), (28, 28), cuda, element_size=2)  # float16: 128x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_host_route_keeps_the_dtype_and_the_values(monkeypatch, dtype):
    """Forced here on the CPU (the route runs on CUDA only): same dtype and device back, the
    values of a direct resize (half types computed in float32, as the route does)."""
    import naf_cli.resampling as resampling

    monkeypatch.setattr(resampling, "needs_host", lambda *args: True)
    images = torch.rand(1, 3, 300, 200, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = resampling.resize_antialiased(images, (3, 2))
    assert got.dtype == dtype and got.device == images.device and got.shape == (1, 3, 3, 2)
    exact = images.float() if dtype == torch.bfloat16 else images
    torch.testing.assert_close(got, _reference(exact, (3, 2)).to(dtype), rtol=0, atol=0)


@pytest.mark.cuda
def test_a_128x_shrink_on_cuda_matches_the_cpu():
    images = torch.rand(1, 3, 896, 1344, generator=torch.Generator().manual_seed(0))
    got = resize_guidance(images.cuda(), (7, 10))
    assert got.is_cuda and got.shape == (1, 3, 7, 10)
    torch.testing.assert_close(got.cpu(), _reference(images, (7, 10)), rtol=0, atol=1e-6)
    moderate = resize_antialiased(images.cuda(), (56, 84))  # 16x: stays on the GPU
    torch.testing.assert_close(moderate.cpu(), _reference(images, (56, 84)), rtol=1e-5, atol=1e-5)
