"""NAF's fused kernels: each step eager and compiled against float64 truth, NAF's output by
either set, the automatic choice, its refusals, and a real compiler failure."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from test_bands import _model

from naf_cli.errors import UnknownNameError
from naf_cli.modeling import fused_kernels as fk
from naf_cli.modeling.rope import RoPE2d

CPU = torch.device("cpu")
needs_compiler = pytest.mark.skipif(fk.cxx_compiler() is None, reason="torch.compile's CPU backend needs a C++ compiler")
KERNELS = [fk.EAGER_KERNELS, pytest.param(fk.COMPILED_KERNELS, marks=needs_compiler)]


@pytest.fixture(autouse=True)
def _no_earlier_failure(monkeypatch):
    """Each test starts with compiling allowed (a failure is process-wide by design)."""
    monkeypatch.setattr(fk, "_failures", [])


def _naf_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


@pytest.mark.parametrize("kernels", KERNELS, ids=["eager", "compiled"])
def test_the_rotation_equals_ropes_forward_at_any_size(kernels):
    rope = RoPE2d(32, 2).eval()  # training mode rescales the grid at random
    for height, width, row0, rows in [(11, 7, 3, 5), (20, 13, 0, 20), (9, 30, 8, 1)]:  # one compile: dynamic shapes
        x = torch.randn(2, 32, height, width)
        whole = rope(x)
        got = rope.rotate_rows(x[:, :, row0:row0 + rows], row0, height, kernels)
        assert got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, whole[:, :, row0:row0 + rows], atol=1e-6, rtol=1e-6)
    assert fk.failure() is None


@pytest.mark.parametrize("kernels", KERNELS, ids=["eager", "compiled"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_channel_sums_equal_float64_sums(kernels, layout):
    for shape in [(2, 16, 7, 9), (1, 32, 32, 45)]:
        x = (torch.randn(*shape) + 0.5).contiguous(memory_format=layout)
        sums, squares = kernels.channel_sums(x)
        assert sums.dtype == squares.dtype == torch.float64 and sums.shape == (shape[0], shape[1])
        torch.testing.assert_close(sums, x.double().sum((2, 3)), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(squares, x.double().square().sum((2, 3)), rtol=1e-5, atol=1e-4)
    assert fk.failure() is None  # the compiled step ran compiled


@needs_compiler
def test_compiled_steps_run_at_any_thread_count_and_leave_it_as_it_was():
    threads = torch.get_num_threads()
    x = torch.randn(1, 16, 6, 7)
    try:
        for count in (3, 1, 2):  # NAF moves the count with the load; 3 runs as 2
            torch.set_num_threads(count)
            sums, _ = fk.COMPILED_KERNELS.channel_sums(x)
            assert torch.get_num_threads() == count
            torch.testing.assert_close(sums, x.double().sum((2, 3)), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)
    assert fk.failure() is None


@pytest.mark.parametrize("kernels", KERNELS, ids=["eager", "compiled"])
def test_relayout_writes_rows_of_a_channels_last_map_exactly(kernels):
    out = torch.zeros(2, 24, 10, 7).contiguous(memory_format=torch.channels_last)
    first, second = torch.randn(2, 16, 4, 7), torch.randn(2, 8, 6, 7).contiguous(memory_format=torch.channels_last)
    kernels.relayout(out[:, :16, 3:7], first)
    kernels.relayout(out[:, 16:, 4:], second)
    expected = torch.zeros(2, 24, 10, 7)
    expected[:, :16, 3:7], expected[:, 16:, 4:] = first, second
    assert torch.equal(out, expected)
    assert fk.failure() is None


@needs_compiler
def test_naf_output_is_the_same_with_either_kernels():
    model = _model(1)
    image, features = torch.rand(1, 3, 96, 80), torch.randn(1, 8, 6, 5)
    outputs = {}
    for name in (fk.EAGER, fk.COMPILED):
        model.kernel_choice = fk.KernelChoice(name)
        with torch.no_grad():
            outputs[name] = model(image, features, (48, 40))
        assert model.kernel_choice.last == name
    bilinear = F.interpolate(features, (48, 40), mode="bilinear", align_corners=False)
    distance = float((outputs[fk.EAGER] - bilinear).norm())
    # measured: 9e-7 of the largest value at x16 on 448 x 448
    assert float((outputs[fk.COMPILED] - outputs[fk.EAGER]).norm()) <= 1e-5 * distance
    assert fk.failure() is None


def test_the_default_compiles_only_after_its_time_in_forwards():
    choice = fk.KernelChoice(None, compile_after_seconds=60.0)
    assert choice.resolve(CPU, torch.float32) is fk.EAGER_KERNELS
    model = _model(1)
    model.kernel_choice = choice
    with torch.no_grad():
        model(torch.rand(1, 3, 40, 40), torch.randn(1, 8, 5, 5), (40, 40))
        assert 0 < choice.forward_seconds < 60.0 and choice.last == fk.EAGER  # its forwards are counted
        counted = choice.forward_seconds
        model.double()(torch.rand(1, 3, 40, 40).double(), torch.randn(1, 8, 5, 5).double(), (40, 40))
    assert choice.forward_seconds == counted  # a forward that could not compile does not count
    choice.resolve(CPU, torch.float32)
    choice.spent(60.0)
    if fk.cxx_compiler() is not None:
        assert choice.resolve(CPU, torch.float32) is fk.COMPILED_KERNELS
    else:
        assert choice.resolve(CPU, torch.float32) is fk.EAGER_KERNELS
    # measured on a CPU in float32 only: elsewhere the default stays eager
    assert choice.resolve(CPU, torch.bfloat16) is fk.EAGER_KERNELS
    assert choice.resolve(torch.device("meta"), torch.float32) is fk.EAGER_KERNELS
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert choice.resolve(CPU, torch.float32) is fk.EAGER_KERNELS
    eager = fk.KernelChoice(fk.EAGER, compile_after_seconds=0.0)
    assert eager.resolve(CPU, torch.float32) is fk.EAGER_KERNELS
    eager.spent(1.0)
    assert eager.forward_seconds == 0.0


def test_kernels_are_named_at_construction_or_on_a_loaded_model():
    model = _model(1)
    assert model.fused_kernels is None and model.kernel_choice.name is None
    model.fused_kernels = fk.EAGER
    assert model.kernel_choice.name == fk.EAGER and model.kernel_choice.forward_seconds == 0.0
    with pytest.raises(UnknownNameError, match="unknown fused kernels 'fast'; known: compiled, eager"):
        type(model)(fused_kernels="fast")
    with pytest.raises(UnknownNameError, match="unknown fused kernels 'fast'"):
        model.fused_kernels = "fast"


def test_compiled_kernels_are_refused_with_the_reason():
    code = ("import torch\nfrom naf_cli.modeling import fused_kernels as fk\n"
            "print(fk.compile_refusal(torch.device('cpu')))\n"
            "print(fk.KernelChoice(None, 0.0).resolve(torch.device('cpu'), torch.float32).name)\n"
            "fk.KernelChoice('compiled').resolve(torch.device('cpu'), torch.float32)\n")
    no_compiler = _naf_python(code, PATH="/nonexistent", CXX="")
    lines = no_compiler.stdout.splitlines()
    assert lines == ["no C++ compiler found ($CXX, else g++ on the PATH): inductor builds CPU kernels with it", "eager"]
    assert "FusedKernelsError: fused kernels 'compiled' cannot run here: no C++ compiler found" in no_compiler.stderr
    switched_off = _naf_python(code, TORCH_COMPILE_DISABLE="1")
    assert switched_off.stdout.splitlines() == ["torch.compile is switched off (TORCH_COMPILE_DISABLE=1)", "eager"]


@needs_compiler
def test_a_compiler_failure_leaves_the_run_going_eagerly(tmp_path):
    # a real failure: inductor is given a "compiler" that fails, with an empty cache
    code = ("import torch\nfrom naf_cli.modeling import fused_kernels as fk\n"
            "x = torch.randn(1, 8, 3, 5)\n"
            "sums, squares = fk.COMPILED_KERNELS.channel_sums(x)\n"
            "assert torch.allclose(sums, x.double().sum((2, 3)))\n"
            "print(fk.failure())\n"
            "print(fk.KernelChoice('compiled').resolve(torch.device('cpu'), torch.float32).name)\n"
            "print(fk.compile_refusal(torch.device('cpu')))\n")
    result = _naf_python(code, CXX="/bin/false", TORCHINDUCTOR_CACHE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    failure, chosen, refusal = result.stdout.splitlines()
    assert "InvalidCxxCompiler" in failure and chosen == "eager"
    assert "RuntimeWarning: NAF's compiled kernels failed (InductorError: InvalidCxxCompiler" in result.stderr
    assert refusal == f"compiling failed earlier in this process: {failure}"


def test_naf_env_says_what_the_default_does():
    env = subprocess.run([sys.executable, "-m", "naf_cli", "env"], capture_output=True, text=True, timeout=120)
    assert env.returncode == 0, env.stderr
    line = next(line for line in env.stdout.splitlines() if "fused kernels" in line)
    if fk.cxx_compiler() is None:
        assert "eager (no C++ compiler found" in line
    else:
        assert f"eager, then compiled once a run has spent {fk.COMPILE_AFTER_SECONDS:g} s" in line
