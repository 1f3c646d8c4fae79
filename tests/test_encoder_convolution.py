"""The encoder's convolution routes: Winograd (NNPACK) against the float64 encoder, the
chooser's refusals, and the OpenMP spin setting made before torch loads."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from test_bands import _model

from naf_cli import openmp_spin
from naf_cli.errors import UnknownNameError
from naf_cli.modeling import NAF
from naf_cli.modeling import encoder_convolution as ec
from naf_cli.modeling.encoder_bands import encode_in_bands

needs_nnpack = pytest.mark.skipif(not ec.nnpack_ready(), reason="this PyTorch has no NNPACK for this CPU")


@needs_nnpack
# (2, 3, 64, 96) in 32-row bands: a batch at a size where NNPACK's own choice would be FFT
@pytest.mark.parametrize("shape,band_rows", [((2, 3, 37, 41), 16), ((2, 3, 64, 96), 32), ((1, 3, 64, 48), 1000),
                                             ((1, 3, 2, 9), 1), ((1, 3, 70, 5), 32)])
def test_winograd_encoder_equals_the_float64_encoder(shape, band_rows):
    model = _model()
    image = torch.rand(*shape)
    with torch.no_grad():
        direct = encode_in_bands(model.image_encoder, image, band_rows, convolution=ec.DIRECT)
        winograd = encode_in_bands(model.image_encoder, image, band_rows, convolution=ec.WINOGRAD)
        exact = model.double().image_encoder.encode(image.double())
    assert winograd.is_contiguous(memory_format=torch.channels_last)
    scale = float(exact.abs().max())
    direct_error = float((direct.double() - exact).abs().max())
    winograd_error = float((winograd.double() - exact).abs().max())
    # measured: about 2.5x the direct route's error, 5e-6 of the output's largest value
    assert winograd_error <= 2e-5 * scale, (winograd_error, scale)
    assert winograd_error <= 10 * direct_error + 1e-6


@needs_nnpack
def test_naf_output_is_the_same_by_either_route(monkeypatch):
    # whatever thread count an earlier test left NNPACK's pool at (the result does not depend on it)
    monkeypatch.setattr(ec, "_pool_threads", [torch.get_num_threads()])
    monkeypatch.setattr(ec, "_pool_pid", [os.getpid()])
    model = _model(1)
    image, features = torch.rand(1, 3, 96, 80), torch.randn(1, 8, 6, 5)
    outputs = {}
    for name in (ec.DIRECT, ec.WINOGRAD, None):
        model.encoder_convolution = name
        with torch.no_grad():
            outputs[name] = model(image, features, (48, 40))
    bilinear = F.interpolate(features, (48, 40), mode="bilinear", align_corners=False)
    distance = float((outputs[ec.DIRECT] - bilinear).norm())
    assert float((outputs[ec.WINOGRAD] - outputs[ec.DIRECT]).norm()) <= 1e-5 * distance
    assert torch.equal(outputs[None], outputs[ec.WINOGRAD])  # chosen on a CPU in float32


def test_layers_winograd_does_not_suit_stay_direct():
    encoder = NAF().image_encoder
    stem, pixel_layer, context_layer = encoder.sem_encoder[0], encoder.encoder[1].conv1, encoder.sem_encoder[1].conv1
    assert ec.layer_route(stem, ec.WINOGRAD) == ec.DIRECT  # 3 input channels
    assert ec.layer_route(pixel_layer, ec.WINOGRAD) == ec.DIRECT  # 1x1
    assert ec.layer_route(context_layer, ec.WINOGRAD) == ec.WINOGRAD
    assert "3x3 kernels" in ec.layer_refusal(pixel_layer) and "input channels" in ec.layer_refusal(stem)


def test_the_chooser_says_why_winograd_cannot_run(monkeypatch):
    cpu = torch.device("cpu")
    assert ec.resolve_convolution(ec.DIRECT, cpu, torch.float32) == ec.DIRECT
    assert "float32 only" in ec.winograd_refusal(cpu, torch.bfloat16)
    assert "CPU only" in ec.winograd_refusal(torch.device("cuda"), torch.float32)
    assert ec.resolve_convolution(None, torch.device("cuda"), torch.float32) == ec.DIRECT
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "autocast" in ec.winograd_refusal(cpu, torch.float32)
        assert ec.resolve_convolution(None, cpu, torch.float32) == ec.DIRECT
    with pytest.raises(ec.ConvolutionError, match=r"'winograd' cannot run here: NNPACK computes in float32 only.*fix:"):
        ec.resolve_convolution(ec.WINOGRAD, cpu, torch.float16)
    with pytest.raises(UnknownNameError, match="unknown encoder convolution 'fft'; known: winograd, direct"):
        NAF(encoder_convolution="fft")
    monkeypatch.setattr(ec, "nnpack_ready", lambda: False)
    assert "no NNPACK" in ec.winograd_refusal(cpu, torch.float32)
    assert ec.resolve_convolution(None, cpu, torch.float32) == ec.DIRECT


def test_a_pool_of_another_size_or_process_is_refused(monkeypatch):
    cpu, threads = torch.device("cpu"), torch.get_num_threads()
    monkeypatch.setattr(ec, "nnpack_ready", lambda: True)
    monkeypatch.setattr(ec, "_failures", [])
    monkeypatch.setattr(ec, "_pool_pid", [os.getpid()])
    for size in {threads + 1, max(1, threads - 1)} - {threads}:
        monkeypatch.setattr(ec, "_pool_threads", [size])
        assert f"pool has {size} threads and torch {threads}" in ec.winograd_refusal(cpu, torch.float32)
    monkeypatch.setattr(ec, "_pool_threads", [threads])
    assert ec.winograd_refusal(cpu, torch.float32) is None
    monkeypatch.setattr(ec, "_pool_threads", [2])
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(ec, "_pool_pid", [os.getpid() + 1])  # as in a forked child
    assert "parent of this forked process" in ec.winograd_refusal(cpu, torch.float32)


@needs_nnpack
def test_switching_nnpack_off_is_respected():
    with torch.backends.nnpack.flags(enabled=False):
        assert "switched off" in ec.winograd_refusal(torch.device("cpu"), torch.float32)
        assert ec.resolve_convolution(None, torch.device("cpu"), torch.float32) == ec.DIRECT


def test_an_nnpack_failure_falls_back_to_the_direct_route(monkeypatch):
    def failing(*args):
        raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")

    monkeypatch.setattr(ec, "_failures", [])
    monkeypatch.setattr(ec, "_pool_threads", [torch.get_num_threads()])
    monkeypatch.setattr(ec, "_pool_pid", [os.getpid()])
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", failing)
    x, weight = torch.randn(2, 16, 9, 11), torch.randn(8, 16, 3, 3)
    torch.testing.assert_close(ec.convolve(x, weight, None, ec.WINOGRAD), F.conv2d(x, weight))
    monkeypatch.setattr(ec, "nnpack_ready", lambda: True)
    assert "failed earlier in this process: NNPACK SpatialConvolution" in ec.winograd_refusal(torch.device("cpu"), torch.float32)


def test_the_cli_sets_the_openmp_spin_before_torch_loads_and_keeps_one_set(monkeypatch):
    monkeypatch.setattr(openmp_spin, "outcome", "")  # restored after the test
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    # here torch is loaded: nothing is set, and the outcome says how to get it
    assert "GNU OpenMP's default (set GOMP_SPINCOUNT=30000 before starting Python" in openmp_spin.shorten_spin()
    assert "GOMP_SPINCOUNT" not in os.environ
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert openmp_spin.shorten_spin() == "kept from the environment: OMP_WAIT_POLICY=PASSIVE"
    # fresh interpreters: the library leaves the environment alone; the CLI package sets it first
    env = {key: value for key, value in os.environ.items() if key not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = "import sys, os, {}; print('torch' in sys.modules, os.environ.get('GOMP_SPINCOUNT'))"
    for module, expected in (("naf_cli", "None"), ("naf_cli.cli", openmp_spin.SPIN_COUNT)):
        fresh = subprocess.run([sys.executable, "-c", code.format(module)], capture_output=True, text=True, env=env, check=True)
        assert fresh.stdout.split() == ["False", expected], module
    env["GOMP_SPINCOUNT"] = "5"
    kept = subprocess.run([sys.executable, "-c", code.format("naf_cli.cli")], capture_output=True, text=True, env=env, check=True)
    assert kept.stdout.split() == ["False", "5"]


def test_torch_compile_traces_the_direct_route():
    # NNPACK's operator has no fake-tensor kernel: tracing it fails, so a traced forward takes
    # the direct route (backend "eager": dynamo traces, no C++ compiler needed)
    model = _model(2)
    image, features = torch.rand(1, 3, 24, 20), torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        traced = torch.compile(model, backend="eager")(image, features, (24, 20))
        model.encoder_convolution = ec.DIRECT
        direct = model(image, features, (24, 20))
    torch._dynamo.reset()
    torch.testing.assert_close(traced, direct, rtol=1e-5, atol=1e-5)
