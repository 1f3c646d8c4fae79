"""benchmarks/gpu_check.sh, the one command for a lent GPU, run here as its CPU dry run: every
step runs on the CPU at tiny sizes, the summaries say so, and a broken step stops the run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ["environment", "cuda-tests", "bench-fp32-x2", "bench-fp32-x4", "bench-bf16-x2", "bench-bf16-x4", "main-b8", "main-b1",
         "main-cpu", "main-torchrun", "agree-main-b8", "agree-main-cpu", "agree-main-torchrun", "bf16-error"]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_runs_every_step_and_summarises_them(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-dry-run", "--work", str(tmp_path / "work")], cwd=REPO,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "setup" not in done.stderr  # this tree is installed already: no setup to redo
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["device"] == "cpu"
    assert [s["name"] for s in summary["steps"]] == STEPS and {s["status"] for s in summary["steps"]} == {"ok"}
    steps = {s["name"]: s for s in summary["steps"]}
    for name in ("agree-main-b8", "agree-main-cpu", "agree-main-torchrun"):
        assert 0 <= steps[name]["figures"]["max_relative_l2"] <= summary["files_agree"]
    rows = steps["bench-fp32-x2"]["figures"]["rows"]
    assert [(r["upsampler"], r["backend"]) for r in rows] == [("floor", "-"), ("naf", "cells (auto)"), ("naf", "reference"),
                                                             ("bilinear", "-")]
    assert all(r["precision"] == "bf16" for r in steps["bench-bf16-x2"]["figures"]["rows"])
    page = (out / "summary.md").read_text()
    assert "(CPU dry run)" in page and "| bf16-error | ok |" in page and "faster than the reference route" in page
    assert "===== main-torchrun" in (out / "steps.log").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["steps.log", "summary.json", "summary.md"]  # few files come back


def test_a_failing_step_stops_the_check_with_one_line_and_a_summary(tmp_path, capsys):
    gpu_check = _module()
    check = gpu_check.Check(tmp_path, tmp_path, gpu_check.DRY)
    check.run("first", [sys.executable, "-c", "print('fine')"])
    with pytest.raises(SystemExit) as stopped:
        check.run("broken", [sys.executable, "-c", "import sys; print('what went wrong'); sys.exit(3)"])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "what went wrong" in err  # the log's tail
    assert f"error: gpu_check step broken failed (exit 3); log: {tmp_path / 'broken.log'}" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [("first", "ok"), ("broken", "failed")]


def test_steps_stop_at_the_checks_budget_and_only_selected_steps_run(tmp_path, capsys):
    from dataclasses import replace

    gpu_check = _module()
    check = gpu_check.Check(tmp_path, tmp_path, replace(gpu_check.DRY, budget=2), only=["slow*"])
    skipped = check.run("other", [sys.executable, "-c", "raise SystemExit(5)"])
    assert skipped.status == "not selected"
    with pytest.raises(SystemExit):
        check.run("slow", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"])
    log = (tmp_path / "steps.log").read_text()
    assert "===== slow:" in log and "stopped after 2 s" in log
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"][1]["status"] == "failed" and summary["steps"][1]["seconds"] < 20


def _feature_file(path: Path, images: dict[str, np.ndarray], complete: bool = True) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["complete"] = complete
        group = f.create_group("features")
        for name, values in images.items():
            group[name] = values
    return path


def test_feature_files_are_compared_per_image_by_relative_error(tmp_path):
    gpu_check = _module()
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 8, 8)), rng.standard_normal((4, 8, 8))
    expected = _feature_file(tmp_path / "e.h5", {"a.png": a, "b.png": b})
    close = _feature_file(tmp_path / "c.h5", {"a.png": a * (1 + 1e-3), "b.png": b})
    assert gpu_check.compare_feature_files(close, expected) == pytest.approx(1e-3, rel=1e-6)
    for bad, words in ((_feature_file(tmp_path / "m.h5", {"a.png": a}), "holds"),
                       (_feature_file(tmp_path / "s.h5", {"a.png": a[:2], "b.png": b}), "(2, 8, 8)"),
                       (_feature_file(tmp_path / "i.h5", {"a.png": a, "b.png": b}, complete=False), "not complete")):
        with pytest.raises(gpu_check.CheckFailed, match=words.replace("(", r"\(").replace(")", r"\)")):
            gpu_check.compare_feature_files(bad, expected)
