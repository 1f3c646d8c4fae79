"""How much memory a run may use, and how much it has used."""

from __future__ import annotations

import os
import resource
import sys

import torch


def available_bytes(device: torch.device) -> int:
    """Memory a forward can take now: free CUDA memory, or the system's available RAM.

    On CUDA, blocks PyTorch's allocator holds but no tensor uses count as free: the driver
    reports them as taken, yet the next forward reuses them (a backbone's freed activations
    would otherwise make a batch that fits look too large).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse anything


# how CUDA libraries word running out of memory (cuBLAS and cuDNN do not raise OutOfMemoryError)
OUT_OF_MEMORY_WORDS = ("out of memory", "alloc_failed", "not_enough_workspace")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says a device or the host ran out of memory (torch.OutOfMemoryError is a RuntimeError)."""
    return isinstance(err, MemoryError) or (
        isinstance(err, RuntimeError) and any(words in str(err).lower() for words in OUT_OF_MEMORY_WORDS))


def make_current(device: str | torch.device) -> None:
    """``cuda:N`` becomes this process's current CUDA device, so that work without an explicit
    device (CUDA events, the data loader's pinning thread, the CUDA context) goes to GPU N, not GPU 0."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def peak_bytes(device: torch.device) -> int:
    """Peak memory of this process so far: CUDA's max allocated, or the resident-set high-water mark."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def human_bytes(n_bytes: float) -> str:
    """1023 B, 4.2 KiB, 7.4 MiB, 1.3 GiB..."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n_bytes) < 1024:
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"


UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str | None) -> int | None:
    """``512M``, ``4G``, ``1.5GB``, ``2GiB`` or a plain number of bytes -> bytes; None stays None."""
    if text is None:
        return None
    from naf_cli.errors import OptionError

    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned and cleaned[-1] in UNITS else (cleaned, "")
    try:
        value = float(number) * UNITS[unit]
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise OptionError(f"--max-memory must be a size such as 512M or 4G, got '{text}'; fix: e.g. --max-memory 8G")
    return int(value)
