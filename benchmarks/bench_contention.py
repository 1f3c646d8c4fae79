"""How NAF and the floor slow down on a busy machine: each row idle, then beside competitors.

    python benchmarks/bench_contention.py [--load 2] [--ratio 16] [--threads N ...] [--repeats 3] [--compile]

A competitor is a plain process looping 1-thread fp32 512 x 512 matrix products, unpinned (a
neighbour's job on a shared node). Each row (the floor, and NAF with the paper's setting:
features [384, 28, 28], 448 x 448 photo) is timed in this process, idle then loaded, with the
thread counts given (default: torch's). Prints one Markdown row per (row, threads): idle ms,
loaded ms, slowdown, and NAF's slowdown over the floor's (the speed issue's goal: at most 1.5);
with --compile, a third row: NAF with its compiled fused kernels (compiled in its warm-up).
Time it on an otherwise idle machine (check `uptime`). Give --threads in decreasing order:
NNPACK's pool is made at the first count, and a smaller count then takes the direct route.
"""

# ruff: noqa: E402 - torch and what imports it come after openmp_spin.shorten_spin()
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

from naf_cli import openmp_spin

openmp_spin.shorten_spin()  # as the naf command does, before torch loads

import torch

from naf_cli.bench.cases import BenchCase
from naf_cli.bench.machine import machine_report
from naf_cli.bench.measure import build_forward


def _compete(stop: multiprocessing.synchronize.Event) -> None:
    torch.set_num_threads(1)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    while not stop.is_set():
        for _ in range(20):
            a = torch.mm(a, b).div_(512 ** 0.5)


ROWS = {"floor": ("floor", False), "naf": ("naf", False), "naf compiled": ("naf", True)}


def _median_ms(row: str, ratio: float, repeats: int) -> float:
    upsampler, compiled = ROWS[row]
    forward = build_forward(BenchCase(upsampler, ratio, backend="auto" if upsampler == "naf" else "-", compiled=compiled))
    forward(1000)  # warm-up
    return statistics.median(forward(seed) for seed in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", type=int, default=2, help="competing processes")
    parser.add_argument("--ratio", type=float, default=16)
    parser.add_argument("--threads", type=int, nargs="*", default=[], help="torch threads to try (default: torch's own)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also NAF with its compiled fused kernels")
    args = parser.parse_args()
    machine = machine_report("cpu")
    print(f"{machine['cpu']}, {machine['cores']} cores, flags {', '.join(machine['cpu_flags'])}, torch {machine['torch']}, "
          f"x{args.ratio:g}, {args.load} competitors, {time.strftime('%Y-%m-%d')}; encoder convolution "
          f"{machine['encoder_convolution']}; OpenMP spin {machine['openmp_spin']}")
    print("| row | threads | idle ms | loaded ms | slowdown |\n|---|---|---|---|---|")
    slowdowns: dict[tuple[str, int], float] = {}
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for row in ("floor", "naf", "naf compiled") if args.compile else ("floor", "naf"):
            idle = _median_ms(row, args.ratio, args.repeats)
            stop = multiprocessing.Event()
            competitors = [multiprocessing.Process(target=_compete, args=(stop,), daemon=True) for _ in range(args.load)]
            for competitor in competitors:
                competitor.start()
            try:
                time.sleep(1.0)  # the competitors are running
                loaded = _median_ms(row, args.ratio, args.repeats)
            finally:
                stop.set()
                for competitor in competitors:
                    competitor.join(timeout=10)
            slowdowns[(row, threads)] = loaded / idle
            print(f"| {row} | {threads} | {idle:,.0f} | {loaded:,.0f} | {loaded / idle:.2f}x |", flush=True)
        for row in ("naf", "naf compiled") if args.compile else ("naf",):
            print(f"| {row}: slowdown / the floor's | {threads} | | | "
                  f"{slowdowns[(row, threads)] / slowdowns[('floor', threads)]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
