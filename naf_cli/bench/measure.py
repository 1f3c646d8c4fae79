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
import threading
import time
from collections.abc import Callable, Iterator

import torch

from naf_cli.allocator import release_freed_memory
from naf_cli.bench.cases import FLOOR, BenchCase, floor_layers
from naf_cli.modeling import NAF, Upsampler
from naf_cli.modeling.fused_kernels import COMPILED, EAGER, compile_failure, failure
from naf_cli.upsamplers import load_upsampler

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
    # never the automatic choice: a long row would change kernels between its forwards
    return NAF(attention_backend=backend, fused_kernels=COMPILED if case.compiled else EAGER)


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
    model: Upsampler = _naf(case) if case.upsampler == "naf" else load_upsampler(case.upsampler)[0]
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


def forward_line(index: int, total: int, warmup: int, ms: float) -> str:
    """What one finished forward says: its time, and after the first an estimate for the row."""
    kind = "warm-up" if index < warmup else "timed"
    left = (total - index - 1) * ms / 1000
    estimate = f"; row done in about {left:.0f} s" if index == 0 and left >= 1 else ""
    return f"  forward {index + 1}/{total} ({kind}): {ms:,.0f} ms{estimate}"


def measure(
    case: BenchCase, repeats: int = 3, warmup: int = 1, on_forward: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Run ``case`` here: ms per image (median of ``repeats``), FPS, peak memory (GFLOPs and
    parameters need no run: ``bench.cases``). ``on_forward`` gets a line after each forward."""
    device = torch.device(case.device)
    forward = build_forward(case)
    compile_seconds = None
    if case.compiled:  # before the peak is reset: compiling is not the forward's memory
        try:
            with torch.inference_mode():  # as the timed forwards run: no recompile for another grad mode
                compile_seconds = round(forward(999) / 1000, 1)
        except Exception as err:  # a compiler failure is this row's finding, not the end of the table
            return {"status": f"compile failed: {compile_failure(err)}"}
        if failure() is not None:  # the kernels fell back to eager: the row would not be compiled
            return {"status": f"compile failed: {failure()}"}
        if on_forward is not None:
            on_forward(f"  first call, compile included: {compile_seconds:,.1f} s")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        if case.compiled:
            release_freed_memory()  # the heap the first call grew is handed back: the timed forwards grow it again, as in eager rows
        _reset_high_water_mark()
        baseline = _status_kib("VmRSS") * 1024
    timings: list[float] = []
    with torch.inference_mode():
        for index in range(warmup + repeats):
            ms = forward(1000 + index if index < warmup else index - warmup)
            if index >= warmup:
                timings.append(ms)
            if on_forward is not None:
                on_forward(forward_line(index, warmup + repeats, warmup, ms))
    high_water = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _status_kib("VmHWM") * 1024
    peak = high_water - baseline
    ms = statistics.median(timings) / case.batch
    return {
        "ms_per_image": round(ms, 4),
        "ms_min_per_image": round(min(timings) / case.batch, 4),
        "fps": round(1000.0 / ms, 4) if ms > 0 else None,
        "peak_memory_mb": round(peak / 2**20, 1),
        "repeats": repeats,
        "compile_seconds": compile_seconds,
    }


# marks the worker's progress lines on its stderr, relayed by the parent as they come
PROGRESS = "naf-bench-progress: "


def measure_isolated(
    case: BenchCase, repeats: int = 3, warmup: int = 1, timeout: float | None = None,
    on_forward: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """``measure`` in a fresh Python process (a CPU's peak must not carry over between rows);
    its per-forward lines reach ``on_forward`` as they come. The process is stopped with the
    caller (an interrupt while it runs)."""
    request = json.dumps({"case": case.as_dict(), "repeats": repeats, "warmup": warmup})
    worker = subprocess.Popen([sys.executable, "-m", "naf_cli.bench.measure", request],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said: list[str] = []

    def relay() -> None:
        assert worker.stderr is not None
        for line in worker.stderr:
            if line.startswith(PROGRESS):
                if on_forward is not None:
                    on_forward(line[len(PROGRESS):].rstrip("\n"))
            elif line.strip():
                said[:] = [*said[-4:], line.strip()]

    relaying = threading.Thread(target=relay, name="naf-bench-relay", daemon=True)
    relaying.start()
    try:
        code = worker.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout:.0f} s"}
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        relaying.join(timeout=5)
    assert worker.stdout is not None
    lines = [line for line in worker.stdout.read().splitlines() if line.startswith("{")]
    worker.stdout.close()
    if code != 0 or not lines:
        if code < 0:
            return {"status": f"killed by signal {-code} (out of memory?)"}
        return {"status": f"failed: {(said or ['no output'])[-1]}"}
    return dict(json.loads(lines[-1]))


def _worker(request: str) -> None:
    from naf_cli.allocator import keep_freed_memory

    keep_freed_memory()
    parsed = json.loads(request)
    row = measure(BenchCase(**parsed["case"]), parsed["repeats"], parsed["warmup"],
                  on_forward=lambda line: print(PROGRESS + line, file=sys.stderr, flush=True))
    row.setdefault("status", "ok")
    print(json.dumps(row))


if __name__ == "__main__":
    _worker(sys.argv[1])
