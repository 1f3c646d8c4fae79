"""Every CUDA path of naf-cli checked in one run, with its figures: what benchmarks/gpu_check.sh runs.

    python benchmarks/gpu_check.py --out DIR [--cpu-dry-run]

Steps, in order; the first that fails stops the run (exit 1, its log named):
  environment  `naf env`: torch, the GPU, the attention backend chosen
  cuda-tests   `pytest -m cuda` (skipped, not failed, without CUDA)
  bench-*      `naf bench` in fp32 and bf16, with the floor row: x16/x32 beside the reference
               route, x72/x128 alone (natten rows are left out: the GPU image has no natten)
  main-*       the README main job on examples/ with --batch-size 8, --batch-size 1, on the CPU,
               and under torchrun with two ranks on one GPU; every file compared with the batch-1 file
               (relative L2 per image at most FILES_AGREE, docs/format.md)
  bf16-error   benchmarks/bf16_error.py: bf16 within 5% of fp32 (relative to fp32 - bilinear)
DIR receives summary.json, summary.md and steps.log (every step's output); both summaries are
rewritten after every step, so a run that stops still says how far it got. The feature files
and one log per step go to --work (the device tool brings back few files). ``--cpu-dry-run`` runs the
same steps on the CPU at tiny sizes (CI runs it).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
# batched against single forwards, CUDA against CPU, torchrun against one process: each image's
# features agree to this relative L2 error (docs/format.md). TF32 convolutions alone, emulated
# on the CPU on the four examples, moved them by up to 0.68%
FILES_AGREE = 2e-2
PAPER_A100 = {16: (56.2, 1786), 32: (267.9, 7101)}  # ms, MiB: the paper's reference route on an A100


@dataclass(frozen=True)
class Sizes:
    """What the steps run at: the real sizes on a GPU, tiny ones on the CPU dry run."""

    device: str
    bench: list[tuple[list[str], list[str]]]  # (ratios, backends) per bench call
    bench_args: list[str]
    main_args: list[str]
    bf16_count: int
    step_timeout: int  # seconds one step may take
    budget: int        # seconds the whole check may take: no step runs past it


# the device tool stops a command after 10 minutes: the check ends inside 9, whatever happens
GPU = Sizes("cuda", [(["16", "32"], ["auto", "reference"]), (["72", "128"], ["auto"])], [], ["--scale", "16"], 4, 240, 540)
DRY = Sizes("cpu", [(["2"], ["auto", "reference"]), (["4"], ["auto"])],
            ["--channels", "8", "--lr-size", "4", "--image-size", "32", "--repeats", "1", "--warmup", "0"],
            ["--scale", "2", "--workers", "0"], 1, 300, 900)


@dataclass
class Step:
    name: str
    command: list[str]
    status: str = "pending"  # running, ok, failed, not selected (--only)
    seconds: float = 0.0
    detail: str = ""
    figures: dict[str, object] = field(default_factory=dict)


class Check:
    """Runs the steps in order, logs each, and keeps the summaries current."""

    def __init__(self, out: Path, work: Path, sizes: Sizes, only: Sequence[str] = ()) -> None:
        self.out, self.work, self.sizes, self.only = out, work, sizes, list(only)
        self.deadline = time.monotonic() + sizes.budget
        (out / "steps.log").unlink(missing_ok=True)
        self.steps: list[Step] = []
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def run(self, name: str, command: list[str], after: Callable[[Step, str, str], None] | None = None) -> Step:
        """Run ``command``; ``after(step, stdout, all output)`` reads its result (CheckFailed: wrong).

        The step is "running" in the summaries while it runs and its stderr goes to steps.log
        as it comes, so a check killed from outside still says where it was."""
        step = Step(name, command, status="running")
        self.steps.append(step)
        if not self.selected(name):
            step.status = "not selected"
            self.write()
            return step
        self.write()
        print(f"gpu_check: {name}: {' '.join(command)}", file=sys.stderr, flush=True)
        timeout = max(1.0, min(self.sizes.step_timeout, self.deadline - time.monotonic()))
        started = time.perf_counter()
        with open(self.out / "steps.log", "a") as joined:
            joined.write(f"===== {name}: {' '.join(command)}\n")
            joined.flush()
            offset = joined.tell()
            try:
                done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=joined, text=True, timeout=timeout,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
                stdout, code = done.stdout, done.returncode
            except subprocess.TimeoutExpired as err:
                stdout, code = _text(err.stdout), -1
                joined.write(f"(stopped after {timeout:.0f} s: the step's limit, or the check's {self.sizes.budget} s)\n")
            joined.write(stdout)
        step.seconds = round(time.perf_counter() - started, 1)
        with open(self.out / "steps.log") as joined:
            joined.seek(offset)
            output = joined.read()
        (self.work / f"{name}.log").write_text(" ".join(command) + "\n\n" + output)
        if code != 0:
            self.fail(step, f"exit {code}")
        step.figures["last_line"] = (output.strip().splitlines() or [""])[-1][:300]
        self.judge(step, lambda: after(step, stdout, output) if after is not None else None)
        return step

    def selected(self, name: str) -> bool:
        return not self.only or any(fnmatch.fnmatch(name, pattern) for pattern in self.only)

    def verify(self, name: str, check: Callable[[Step], None]) -> Step:
        """A check of earlier steps' results, in this process."""
        step = Step(name, [])
        self.steps.append(step)
        if not self.selected(name):
            step.status = "not selected"
            return step
        self.judge(step, lambda: check(step))
        return step

    def judge(self, step: Step, check: Callable[[], None]) -> None:
        try:
            check()
        except CheckFailed as err:
            self.fail(step, str(err))
        except (OSError, KeyError, ValueError) as err:  # a result that is not there or does not parse
            self.fail(step, f"{type(err).__name__}: {err}")
        step.status = "ok"
        self.write()

    def fail(self, step: Step, detail: str) -> None:
        step.status, step.detail = "failed", detail
        self.write()
        log = self.work / f"{step.name}.log"
        tail = log.read_text().splitlines()[-15:] if log.exists() else []
        print("\n".join(tail), file=sys.stderr)
        print(f"error: gpu_check step {step.name} failed ({detail}); log: {log}; fix: correct it and run the check "
              f"again (setup is not redone; --only '{step.name}' runs that step alone)", file=sys.stderr)
        raise SystemExit(1)

    def write(self) -> None:
        steps = [vars(s) for s in self.steps]
        summary = {"started": self.started, "device": self.sizes.device, "dry_run": self.sizes.device == "cpu",
                   "files_agree": FILES_AGREE, "steps": steps}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        (self.out / "summary.md").write_text(markdown(summary))


class CheckFailed(Exception):
    """A step ran but its result is wrong."""


def _text(data: object) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data or "")


def compare_feature_files(found: Path, expected: Path) -> float:
    """The largest relative L2 error of an image's features in ``found`` against ``expected``;
    CheckFailed when the files do not hold the same images of the same shapes, or are incomplete."""
    worst = 0.0
    with h5py.File(found, "r") as a, h5py.File(expected, "r") as b:
        for handle, path in ((a, found), (b, expected)):
            if not handle.attrs.get("complete"):
                raise CheckFailed(f"{path} is not complete")
        names_a, names_b = sorted(a["features"]), sorted(b["features"])
        if names_a != names_b:
            raise CheckFailed(f"{found} holds {names_a}, {expected} holds {names_b}")
        for name in names_a:
            x, y = (np.asarray(h["features"][name][()], dtype=np.float64) for h in (a, b))
            if x.shape != y.shape:
                raise CheckFailed(f"{name}: {x.shape} in {found}, {y.shape} in {expected}")
            worst = max(worst, float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-12)))
    return worst


def bench_figures(step: Step, stdout: str, _output: str) -> None:
    """The bench rows that matter, kept in the summary; a row that did not run is a failure
    unless it was predicted not to fit."""
    report = json.loads(stdout)
    rows = []
    for row in report["rows"]:
        if row["status"] != "ok" and not str(row["status"]).startswith("skipped: predicted"):  # too big for this GPU: said, not run
            raise CheckFailed(f"bench row {row['upsampler']} [{row['backend']}] x{row['ratio']:g}: {row['status']}")
        rows.append({key: row[key] for key in ("upsampler", "backend", "ratio", "output_size", "precision", "ms_per_image",
                                              "peak_memory_mb", "status")})
    step.figures.update(machine={k: report["machine"].get(k) for k in ("gpu", "cpu", "torch", "cpu_bf16_hardware")}, rows=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="summary.json, summary.md, steps.log (all the logs)")
    parser.add_argument("--work", type=Path, default=REPO / ".gpu-check-work", help="the feature files and one log per step")
    parser.add_argument("--cpu-dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="run only the steps whose names match (repeatable; e.g. 'main-*' 'agree-*' after a fix: "
                             "agree-* reads the main-* files left in --work)")
    args = parser.parse_args()
    sizes = DRY if args.cpu_dry_run else GPU
    out, work = args.out.resolve(), args.work.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    check = Check(out, work, sizes, args.only)
    naf = [sys.executable, "-m", "naf_cli"]
    dev = sizes.device

    check.run("environment", [*naf, "env", "--device", dev])

    def some_ran(step: Step, stdout: str, _output: str) -> None:
        summary = [line for line in stdout.splitlines() if " in " in line and ("passed" in line or "skipped" in line)]
        step.figures["result"] = summary[-1] if summary else ""
        if dev == "cuda" and " passed" not in step.figures["result"]:
            raise CheckFailed("no CUDA test ran on the GPU machine (all skipped)")

    check.run("cuda-tests", [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"], after=some_ran)
    for precision in ("fp32", "bf16"):
        for ratios, backends in sizes.bench:
            floor = ["--floor"] if precision == "fp32" else ["--no-floor"]
            check.run(f"bench-{precision}-x{ratios[0]}", [
                *naf, "bench", "--ratio", *ratios, "--upsampler", "naf", "--upsampler", "bilinear",
                *[a for b in backends for a in ("--backend", b)], "--precision", precision, *floor, "--device", dev,
                *sizes.bench_args, "--json"], after=bench_figures)

    job = ["upsample", "examples", "--vfm", "effnet-lite0", *sizes.main_args, "--overwrite"]
    files = {name: work / f"{name}.h5" for name in ("main-b8", "main-b1", "main-cpu", "main-torchrun")}
    for name, extra in (("main-b8", ["--device", dev, "--batch-size", "8"]), ("main-b1", ["--device", dev, "--batch-size", "1"]),
                        ("main-cpu", ["--device", "cpu", "--batch-size", "1"])):
        check.run(name, [*naf, *job, *extra, "-o", str(files[name])])
    # two ranks on one GPU (gloo start check, one part each, the last completes the file); one
    # process under torchrun would be a plain run (WORLD_SIZE 1)
    check.run("main-torchrun", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                "-m", "naf_cli", *job, "--device", "cuda:0" if dev == "cuda" else dev,
                                "-o", str(files["main-torchrun"])])
    for name in ("main-b8", "main-cpu", "main-torchrun"):
        def agree(step: Step, name: str = name) -> None:
            worst = compare_feature_files(files[name], files["main-b1"])
            step.figures = {"max_relative_l2": float(f"{worst:.3g}")}
            if worst > FILES_AGREE:
                raise CheckFailed(f"{files[name].name} differs from main-b1.h5 by {worst:.2e} (relative L2), above {FILES_AGREE}")
        check.verify(f"agree-{name}", agree)

    check.run("bf16-error", [sys.executable, "benchmarks/bf16_error.py", "examples", "--count", str(sizes.bf16_count),
                             "--device", dev, "--max-percent", "5"])
    print(f"gpu_check: every step passed; {out / 'summary.md'}", file=sys.stderr)


def markdown(summary: dict) -> str:
    """The summary as a page: steps, then the bench rows, then the reference-route comparison at x16."""
    lines = [f"# gpu_check {summary['started']} on {summary['device']}" + (" (CPU dry run)" if summary["dry_run"] else ""), "",
             "| step | status | s | result |", "|---|---|---|---|"]
    rows = []
    for step in summary["steps"]:
        figures = {k: v for k, v in step["figures"].items() if k not in ("rows", "machine") and not (k == "last_line" and "rows" in step["figures"])}
        lines.append(f"| {step['name']} | {step['status']} | {step['seconds']} | {step['detail'] or json.dumps(figures)} |")
        rows.extend(step["figures"].get("rows", []))
    if rows:
        lines += ["", "| upsampler | backend | ratio | output | precision | ms/img | peak MB | status |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['upsampler']} | {r['backend']} | x{r['ratio']:g} | {r['output_size']} | {r['precision']} | "
                         f"{r['ms_per_image']} | {r['peak_memory_mb']} | {r['status']} |")
        lines += ["", *goal_lines(rows)]
    return "\n".join(lines) + "\n"


def goal_lines(rows: list[dict]) -> list[str]:
    """NAF (chosen backend) against the reference route, fp32: the goal is x16 at least 10x faster at a third of the memory."""
    lines = []
    for ratio in sorted({r["ratio"] for r in rows}):
        naf = [r for r in rows if r["ratio"] == ratio and r["precision"] == "fp32" and "auto" in r["backend"] and r["ms_per_image"]]
        ref = [r for r in rows if r["ratio"] == ratio and r["precision"] == "fp32" and r["backend"] == "reference" and r["ms_per_image"]]
        if naf and ref:
            speed = ref[0]["ms_per_image"] / naf[0]["ms_per_image"]
            memory = naf[0]["peak_memory_mb"] / max(ref[0]["peak_memory_mb"], 1e-9)
            paper = PAPER_A100.get(int(ratio))
            lines.append(f"x{ratio:g}: NAF {speed:.1f}x faster than the reference route, at {memory:.2f} of its peak memory"
                         + (f" (paper, A100: {paper[0]} ms, {paper[1]} MiB)" if paper else ""))
    return lines


if __name__ == "__main__":
    main()
