"""A benchmark table: every case checked, predicted, then measured (or said why not)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import torch

from naf_cli.bench.cases import (
    FLOOR,
    NO_BACKEND,
    BenchCase,
    case_flops,
    case_params,
    case_settings,
    output_bytes,
    predicted_bytes,
)
from naf_cli.bench.measure import measure, measure_isolated
from naf_cli.errors import first_line
from naf_cli.modeling import NAF
from naf_cli.modeling.attention import choose_backend, refusals
from naf_cli.pipeline.memory import available_bytes, gib, is_out_of_memory

# rows predicted to need more than this share of the available memory are not attempted
MEMORY_MARGIN = 0.9


def backend_refusal(case: BenchCase, model: NAF) -> tuple[str, str | None]:
    """(backend name shown in the row, why it cannot run or None)."""
    if case.upsampler != "naf":
        return NO_BACKEND, None
    features = torch.empty(case.batch, case.channels, case.lr_size, case.lr_size, device="meta")
    problem = replace(model.problem(features, (case.output_size, case.output_size)), device_type=torch.device(case.device).type)
    if case.backend == "auto":
        return choose_backend(problem).name + " (auto)", None
    return case.backend, refusals(problem).get(case.backend, f"unknown backend '{case.backend}'")


def base_row(case: BenchCase, backend: str, model: NAF) -> dict[str, object]:
    return {
        "upsampler": case.upsampler, "backend": backend, "ratio": case.ratio, "output_size": case.output_size,
        "channels": case.channels, "lr_size": case.lr_size, "batch": case.batch,
        "precision": "fp32" if case.upsampler == FLOOR else case.precision, "device": case.device,
        "guidance_size": case.guidance[0], "banded": case.banded, "compiled": case.compiled, "compile_seconds": None,
        "ms_per_image": None, "fps": None, "peak_memory_mb": None,
        "gflops": None if (flops := case_flops(case, model)) is None else round(flops / 1e9, 6),
        "params": case_params(case, model), "settings": case_settings(case),
        "output_mb": round((0 if case.banded or case.upsampler == FLOOR else output_bytes(case)) / 2**20, 1),
    }


def run_bench(
    cases: list[BenchCase], repeats: int, warmup: int, on_row: Callable[[int, int, BenchCase], None] | None = None,
    on_forward: Callable[[str], None] | None = None,
) -> list[dict[str, object]]:
    """One row per case (``bench_rows``, all of them)."""
    return list(bench_rows(cases, repeats, warmup, on_row, on_forward))


def bench_rows(
    cases: list[BenchCase], repeats: int, warmup: int, on_row: Callable[[int, int, BenchCase], None] | None = None,
    on_forward: Callable[[str], None] | None = None,
) -> Iterator[dict[str, object]]:
    """Each case's row as soon as it is measured (an interrupted table keeps the finished rows).
    CPU rows each run in a fresh process; CUDA rows run here with the peak statistics reset per
    row. ``on_row`` hears of each row before it runs, ``on_forward`` gets a line per forward."""
    model = NAF()
    for index, case in enumerate(cases):
        if on_row is not None:
            on_row(index, len(cases), case)
        backend, refusal = backend_refusal(case, model)
        row = base_row(case, backend, model)
        need, have = predicted_bytes(case, model), available_bytes(torch.device(case.device))
        if refusal is not None:
            row["status"] = f"refused: {refusal}"
        elif need > MEMORY_MARGIN * have:
            row["status"] = f"skipped: predicted {gib(need)}, {gib(have)} available"
        else:
            measured = (measure_on_cuda(case, repeats, warmup, on_forward) if case.device.startswith("cuda")
                        else measure_isolated(case, repeats, warmup, on_forward=on_forward))
            measured.setdefault("status", "ok")
            row.update(measured)
        yield row


def measure_on_cuda(
    case: BenchCase, repeats: int, warmup: int, on_forward: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """``measure`` in this process on the case's GPU (events recorded on its stream), starting
    from an empty cache; running out of memory ends the row, not the table."""
    device = torch.device(case.device)
    torch.cuda.empty_cache()  # the last row's cached blocks are not this row's
    try:
        with torch.cuda.device(device):
            return measure(case, repeats, warmup, on_forward)
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        return {"status": f"out of memory (predicted {gib(predicted_bytes(case, NAF()))}): {first_line(err)}"}
    finally:
        torch.cuda.empty_cache()
