"""`naf bench` through the real CLI: rows, sizes, parameters and FLOPs checked against
independent counts, rows refused or skipped with reasons. Nothing here is timed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from naf_cli.cli.app import spread_greedy_options
from naf_cli.modeling import NAF
from naf_cli.modeling.fused_kernels import compile_failure, cxx_compiler

CLI = [sys.executable, "-m", "naf_cli"]
SMALL = ["--channels", "8", "--lr-size", "6", "--image-size", "24", "--repeats", "1", "--warmup", "0"]


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "bench", *args], capture_output=True, text=True, timeout=600)


def test_greedy_options_take_several_values():
    args = ["bench", "--ratio", "2", "8", "16", "--json", "--upsampler", "naf", "bilinear", "--channels", "8"]
    assert spread_greedy_options(args) == [
        "bench", "--ratio", "2", "--ratio", "8", "--ratio", "16", "--json",
        "--upsampler", "naf", "--upsampler", "bilinear", "--channels", "8",
    ]
    assert spread_greedy_options(["upsample", "a", "b", "--scale", "4"]) == ["upsample", "a", "b", "--scale", "4"]


@pytest.fixture(scope="module")
def report():
    result = _bench("--ratio", "2", "2.5", "--upsampler", "naf", "bilinear", "--backend", "cells", "reference", *SMALL, "--json")
    assert result.returncode == 0, result.stderr
    assert "[1/8]" in result.stderr  # progress on stderr, results alone on stdout
    report = json.loads(result.stdout)
    measured = [r for r in report["rows"] if r["status"] == "ok"]
    assert measured and result.stderr.count("  forward 1/1 (timed): ") == len(measured)  # a line per forward
    return report


def _flops_of(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def test_one_row_per_upsampler_backend_and_ratio_with_a_floor_first(report):
    keys = [(r["upsampler"], r["backend"], r["ratio"]) for r in report["rows"]]
    assert keys == [
        ("floor", "-", 2.0), ("naf", "cells", 2.0), ("naf", "reference", 2.0), ("bilinear", "-", 2.0),
        ("floor", "-", 2.5), ("naf", "cells", 2.5), ("naf", "reference", 2.5), ("bilinear", "-", 2.5),
    ]
    machine = report["machine"]
    assert machine["device"] == "cpu" and machine["cores"] >= 1 and machine["torch"] == torch.__version__
    assert isinstance(machine["cpu_flags"], list) and machine["cpu"]


def test_sizes_parameters_and_flops(report):
    # FLOPs are those of the direct convolutions (as papers count them); torch's counter does
    # not see NNPACK's Winograd op, which does fewer multiplications
    model = NAF(encoder_convolution="direct")
    convs = [m for m in model.image_encoder.modules() if isinstance(m, nn.Conv2d)]
    conv_params = sum(p.numel() for c in convs for p in c.parameters())
    for row in report["rows"]:
        assert row["output_size"] == round(6 * row["ratio"])
        assert row["channels"] == 8 and row["lr_size"] == 6 and row["batch"] == 1
        assert row["params"] == {"naf": 662_528, "bilinear": 0, "floor": conv_params}[row["upsampler"]]
        size = (row["output_size"], row["output_size"])
        image, features = torch.rand(1, 3, 24, 24), torch.randn(1, 8, 6, 6)
        if row["upsampler"] == "naf" and row["status"] == "ok":
            counted = _flops_of(lambda size=size, image=image, features=features: model(image, features, size))
        elif row["upsampler"] == "floor":
            guide = model.image_encoder.prepare(image, size)
            counted = _flops_of(lambda guide=guide: model.image_encoder.encode(guide))
        else:
            counted = 0
        # at a non-integer ratio the cells backend also multiplies padding slots, which the
        # analytic count (useful work) leaves out
        if row["ratio"] == int(row["ratio"]) or row["upsampler"] != "naf":
            assert row["gflops"] == pytest.approx(counted / 1e9, rel=1e-4, abs=1e-6), row


def test_measured_rows_have_times_and_peaks(report):
    for row in report["rows"]:
        if row["status"] != "ok":
            continue
        assert row["ms_per_image"] > 0
        # both are rounded to 4 decimals
        assert row["fps"] == pytest.approx(1000 / row["ms_per_image"], rel=1e-3 + 1e-4 / row["ms_per_image"])
        assert row["peak_memory_mb"] >= 0 and row["precision"] == "fp32" and row["device"] == "cpu"


def test_a_backend_that_cannot_run_is_refused_with_its_reason(report):
    refused = [r for r in report["rows"] if r["status"] != "ok"]
    assert [(r["backend"], r["ratio"]) for r in refused] == [("reference", 2.5)]
    assert "not a whole number" in refused[0]["status"] and refused[0]["ms_per_image"] is None


def test_rows_that_would_not_fit_are_listed_not_run():
    result = _bench("--ratio", "4000", "--upsampler", "bilinear", "--no-floor", *SMALL[4:], "--channels", "384", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    assert row["status"].startswith("skipped: predicted") and row["output_size"] == 112_000 and row["ms_per_image"] is None


def test_the_baselines_are_rows_built_with_their_shipped_settings():
    """jbu and jbf through load_upsampler: their sigmas recorded in the row and the table, and
    the row's output the same as the registry's module gives."""
    from naf_cli.upsamplers import JBF_SIGMAS, JBU_SIGMAS

    result = _bench("--ratio", "3", "--upsampler", "jbu", "jbf", "--no-floor", *SMALL, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [(r["upsampler"], r["status"]) for r in rows] == [("jbu", "ok"), ("jbf", "ok")]
    for row, (spatial, colour) in zip(rows, (JBU_SIGMAS, JBF_SIGMAS), strict=True):
        assert row["settings"] == f"sigma_spatial={spatial}, sigma_range={colour}"
        assert row["gflops"] is None and row["params"] == 0 and row["ms_per_image"] > 0
    table = _bench("--ratio", "3", "--upsampler", "jbf", "--no-floor", *SMALL)
    assert table.returncode == 0, table.stderr
    assert f"jbf: sigma_spatial={JBF_SIGMAS[0]}, sigma_range={JBF_SIGMAS[1]} (its shipped settings" in " ".join(table.stdout.split())


def test_table_and_bad_options():
    result = _bench("--ratio", "2", "--upsampler", "bilinear", *SMALL)
    assert result.returncode == 0, result.stderr
    assert "bilinear" in result.stdout and "floor" in result.stdout and "x2" in result.stdout
    bad = _bench("--precision", "fp8")
    assert bad.returncode == 2 and "--precision must be one of fp32, bf16, fp16" in bad.stderr
    bad = _bench("--upsampler", "anyup")
    assert bad.returncode == 2 and "unknown upsampler 'anyup' for bench; known: naf, nearest, bilinear, bicubic, jbu, jbf" in bad.stderr
    bad = _bench("--backend", "fused")
    assert bad.returncode == 2 and "unknown attention backend 'fused'" in bad.stderr


def test_an_interrupted_bench_prints_the_rows_it_finished():
    """A scheduler's SIGTERM to the whole group mid-table: the finished rows are still printed."""
    import os
    import signal

    args = ["--ratio", "2", "2.5", "3", "--upsampler", "naf", "--no-floor", "--channels", "8", "--lr-size", "6",
            "--image-size", "24", "--repeats", "200", "--warmup", "1", "--json"]
    bench = subprocess.Popen([*CLI, "bench", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    assert bench.stderr is not None
    seen = []
    for line in bench.stderr:
        seen.append(line)
        if line.startswith("[2/3]"):  # the first row is done, the second starting
            break
    os.killpg(bench.pid, signal.SIGTERM)
    out, err = bench.communicate(timeout=120)
    assert bench.returncode == 130, "".join(seen) + err
    report = json.loads(out)
    assert report["interrupted"] and [r["ratio"] for r in report["rows"]] == [2.0]
    assert report["rows"][0]["status"] == "ok" and report["rows"][0]["ms_per_image"] > 0
    assert "error: interrupted after 1 of 3 rows (printed above); fix: " in err and "Traceback" not in err


@pytest.mark.skipif(cxx_compiler() is None, reason="torch.compile's CPU backend needs a C++ compiler")
def test_a_compiled_naf_row_records_its_compile_time():
    result = _bench("--ratio", "2", "--upsampler", "naf", "bilinear", "--compile", "--no-floor", *SMALL, "--json")
    assert result.returncode == 0, result.stderr
    naf, bilinear = json.loads(result.stdout)["rows"]
    assert naf["upsampler"] == "naf" and naf["compiled"] is True and naf["status"] == "ok", naf
    assert naf["compile_seconds"] > 0 and naf["ms_per_image"] > 0
    assert bilinear["compiled"] is False and bilinear["compile_seconds"] is None  # --compile is NAF's alone
    assert "first call, compile included: " in result.stderr


def test_a_compile_failure_is_named_by_its_error():
    err = RuntimeError("backend='inductor' raised:\n\nRecursionError: maximum recursion depth exceeded\n\nSet TORCHDYNAMO_VERBOSE=1")
    assert compile_failure(err) == "RuntimeError: RecursionError: maximum recursion depth exceeded"
    assert compile_failure(ValueError("bad")) == "ValueError: bad"
