"""Timing and peak memory of one benchmark case.

Each timed repeat gets a fresh random image and fresh features, so nothing derived from an
image is reused. On CUDA, CUDA events time the forward and the peak is CUDA's max allocated
above what was allocated before. On a CPU, every case runs in its own process
(``measure_isolated``), and the peak is the process's resident high-water mark above its
resident size just before the first forward, so no row inherits another's peak.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch

from naf_cli.bench.cases import FLOOR, BenchCase, floor_layers
from naf_cli.modeling import NAF, Interpolation, Upsampler

Forward = Callable[[int], float]


def _status_kib(field: str) -> int:
    """A ``Vm*`` line of /proc/self/status, in KiB (0 where there is none)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_high_water_mark() -> None:
    """Start VmHWM again from the current resident size (Linux >= 4.0), so a transient peak
    while loading the model is not taken for the forward's."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def _autocast(case: BenchCase) -> contextlib.AbstractContextManager[object]:
    if case.precision == "fp32" or case.upsampler == FLOOR:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if case.precision == "bf16" else torch.float16
    return torch.autocast(torch.device(case.device).type, dtype=dtype)


def _naf(case: BenchCase) -> NAF:
    backend = None if case.backend in ("auto", "-") else case.backend
    return NAF(attention_backend=backend)


def _inputs(case: BenchCase, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(case.batch, 3, case.image_size, case.image_size, generator=generator)
    features = torch.randn(case.batch, case.channels, case.lr_size, case.lr_size, generator=generator)
    return image.to(case.device), features.to(case.device)


def build_forward(case: BenchCase) -> Forward:
    """``forward(seed)``: one forward pass on fresh inputs made from ``seed``; returns its
    milliseconds (making the inputs is not timed)."""
    device = torch.device(case.device)
    size = (case.output_size, case.output_size)
    if case.upsampler == FLOOR:
        chains = [chain.to(device).to(memory_format=torch.channels_last).eval() for chain in floor_layers(NAF())]

        def run_floor(seed: int) -> float:
            generator = torch.Generator().manual_seed(seed)
            guide = torch.rand(case.batch, 3, *case.guidance, generator=generator).to(device)
            guide = guide.contiguous(memory_format=torch.channels_last)
            with timed(device) as elapsed:
                for chain in chains:
                    chain(guide)
            return elapsed[0]

        return run_floor
    model: Upsampler = _naf(case) if case.upsampler == "naf" else Interpolation(case.upsampler)
    model = model.to(device).eval()

    def run(seed: int) -> float:
        image, features = _inputs(case, seed)
        with timed(device) as elapsed, _autocast(case):
            if case.banded and isinstance(model, NAF):
                for _r0, _r1, rows in model.forward_bands(image, features, size):
                    del rows  # a sink that takes each band and lets it go
            else:
                out = model(image, features, size)
                del out
        return elapsed[0]

    return run


@contextlib.contextmanager
def timed(device: torch.device) -> Iterator[list[float]]:
    """Yields a list that holds the block's duration in ms once it ends (CUDA events on a GPU)."""
    elapsed: list[float] = []
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield elapsed
        end.record()
        torch.cuda.synchronize(device)
        elapsed.append(start.elapsed_time(end))
        return
    started = time.perf_counter()
    with torch.inference_mode():
        yield elapsed
    elapsed.append((time.perf_counter() - started) * 1000)


def measure(case: BenchCase, repeats: int = 3, warmup: int = 1) -> dict[str, object]:
    """Run ``case`` here: ms per image (median of ``repeats``), FPS, peak memory (GFLOPs and
    parameters need no run: ``bench.cases``)."""
    device = torch.device(case.device)
    forward = build_forward(case)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_high_water_mark()
        baseline = _status_kib("VmRSS") * 1024
    with torch.inference_mode():
        for seed in range(warmup):
            forward(1000 + seed)
        timings = [forward(seed) for seed in range(repeats)]
    high_water = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _status_kib("VmHWM") * 1024
    peak = high_water - baseline
    ms = statistics.median(timings) / case.batch
    return {
        "ms_per_image": round(ms, 4),
        "ms_min_per_image": round(min(timings) / case.batch, 4),
        "fps": round(1000.0 / ms, 4) if ms > 0 else None,
        "peak_memory_mb": round(peak / 2**20, 1),
        "repeats": repeats,
    }


def measure_isolated(case: BenchCase, repeats: int = 3, warmup: int = 1, timeout: float | None = None) -> dict[str, object]:
    """``measure`` in a fresh Python process (a CPU's peak must not carry over between rows)."""
    request = json.dumps({"case": case.as_dict(), "repeats": repeats, "warmup": warmup})
    try:
        done = subprocess.run(
            [sys.executable, "-m", "naf_cli.bench.measure", request], capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        if done.returncode < 0:
            return {"status": f"killed by signal {-done.returncode} (out of memory?)"}
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": f"failed: {last}"}
    return json.loads(lines[-1])


def _worker(request: str) -> None:
    from naf_cli.allocator import keep_freed_memory

    keep_freed_memory()
    parsed = json.loads(request)
    row = measure(BenchCase(**parsed["case"]), parsed["repeats"], parsed["warmup"])
    row["status"] = "ok"
    print(json.dumps(row))


if __name__ == "__main__":
    _worker(sys.argv[1])
