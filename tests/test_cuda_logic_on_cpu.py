"""The CUDA code paths' own logic, exercised on the CPU: what the GPU machine reports is
stood in for by the torch.cuda functions it would answer through (no GPU is needed to check
the arithmetic and the order of calls; benchmarks/gpu_check.sh runs the real thing)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from naf_cli.bench import run as bench_run
from naf_cli.bench.cases import BenchCase
from naf_cli.pipeline import memory


def test_blocks_cached_by_the_allocator_count_as_available(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 12 * gib)
    # 10 GiB free on the card, and 18 GiB held by PyTorch's cache that no tensor uses
    assert memory.available_bytes(torch.device("cuda:0")) == 28 * gib


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
                                   RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")])
def test_a_bench_row_out_of_gpu_memory_ends_that_row_not_the_table(monkeypatch, error):
    calls = []

    def measure(case, repeats, warmup, on_forward=None):
        calls.append(case.ratio)
        if case.ratio == 2:
            raise error
        return {"ms_per_image": 1.0, "fps": 1000.0, "peak_memory_mb": 1.0}

    emptied = []
    monkeypatch.setattr(bench_run, "measure", measure)
    monkeypatch.setattr(bench_run, "available_bytes", lambda device: 2**40)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    cases = [BenchCase("naf", ratio, backend="cells", channels=8, lr_size=4, image_size=16, device="cuda") for ratio in (2, 3)]
    rows = bench_run.run_bench(cases, repeats=1, warmup=0)
    assert calls == [2, 3]
    assert rows[0]["status"].startswith("out of memory") and rows[0]["ms_per_image"] is None
    assert rows[1]["status"] == "ok" and rows[1]["ms_per_image"] == 1.0
    assert len(emptied) >= 2  # the cache is emptied between rows: no row inherits another's
    monkeypatch.setattr(bench_run, "measure", lambda case, repeats, warmup, on_forward=None: (_ for _ in ()).throw(RuntimeError("bad kernel")))
    with pytest.raises(RuntimeError, match="bad kernel"):  # other failures are not taken for memory
        bench_run.run_bench(cases[:1], repeats=1, warmup=0)


def test_torchrun_on_cuda_starts_a_gloo_group_on_the_rank_device(monkeypatch, tmp_path):
    import torch.distributed as dist

    from naf_cli.pipeline import distributed

    seen = {}
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: seen.setdefault("device", str(device)))

    def init_process_group(backend, timeout):
        seen["backend"] = backend
        raise RuntimeError("stop here")  # the group itself needs other ranks

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    rank = distributed.TorchrunRank(1, 2, 1)
    with contextlib.suppress(RuntimeError):
        distributed.start_together(rank, "cuda:1", {}, tmp_path, lambda: None, lambda: None)
    assert seen == {"device": "cuda:1", "backend": "gloo"}
