"""The attention's matrix products run in autocast's dtype where that is fast (CUDA, CPUs with
bf16 in hardware), and in the inputs' dtype elsewhere, whatever backend buffers they write to."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from naf_cli.modeling import NAF
from naf_cli.modeling.attention import cross_scale_neighborhood_attention, precision


class MatmulDtypes(TorchDispatchMode):
    """Records the dtypes of every batched matrix product that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.bmm, torch.ops.aten.baddbmm, torch.ops.aten.mm):
            self.seen.update(a.dtype for a in args if isinstance(a, torch.Tensor))
        return func(*args, **(kwargs or {}))


def _naf_inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 64, 80, generator=generator), torch.randn(1, 32, 6, 5, generator=generator)


@pytest.mark.parametrize("hardware", [True, False])
def test_naf_under_cpu_autocast_multiplies_in_bf16_only_with_bf16_hardware(hardware, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16_hardware", lambda: hardware)
    model = NAF().eval()
    image, features = _naf_inputs()
    with torch.inference_mode():
        fp32 = model(image, features, (60, 50))
        with torch.autocast("cpu", dtype=torch.bfloat16), MatmulDtypes() as products:
            reduced = model(image, features, (60, 50))
    assert products.seen == ({torch.bfloat16} if hardware else {torch.float32})
    assert reduced.dtype == torch.float32  # the output keeps the features' dtype
    bilinear = torch.nn.functional.interpolate(features, (60, 50), mode="bilinear", align_corners=False)
    assert (reduced - fp32).norm() / (fp32 - bilinear).norm() < 0.05  # the speed issue's accuracy bound
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 8, *size, generator=generator) for size in ((18, 15), (6, 5), (6, 5)))
    plain = cross_scale_neighborhood_attention(q, k, v, 2, 3, backend="cells")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = cross_scale_neighborhood_attention(q, k, v, 2, 3, backend="cells")
    if hardware:
        torch.testing.assert_close(under_autocast, plain, rtol=0.02, atol=0.02)
    else:  # the attention itself is exactly fp32 (the encoder's convolutions are autocast's)
        assert torch.equal(under_autocast, plain)


def test_without_autocast_products_keep_the_inputs_dtype():
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 8, *size, generator=generator, dtype=torch.float64) for size in ((18, 15), (6, 5), (6, 5)))
    with MatmulDtypes() as products:
        cross_scale_neighborhood_attention(q, k, v, 2, 3, backend="cells")
    assert products.seen == {torch.float64}


def test_fp16_autocast_on_a_cpu_leaves_the_attention_in_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16_hardware", lambda: True)
    with torch.autocast("cpu", dtype=torch.float16):
        assert precision.reduced_dtype("cpu") is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert precision.reduced_dtype("cpu") == torch.bfloat16
    assert precision.reduced_dtype("cpu") is None


@pytest.mark.cuda
def test_naf_under_cuda_autocast_multiplies_in_bf16():
    model = NAF().eval().cuda()
    image, features = (t.cuda() for t in _naf_inputs())
    with torch.inference_mode():
        fp32 = model(image, features, (60, 50))
        with torch.autocast("cuda", dtype=torch.bfloat16), MatmulDtypes() as products:
            reduced = model(image, features, (60, 50))
    assert torch.bfloat16 in products.seen and torch.float32 not in products.seen
    bilinear = torch.nn.functional.interpolate(features, (60, 50), mode="bilinear", align_corners=False)
    assert (reduced.float() - fp32).norm() / (fp32 - bilinear).norm() < 0.05
