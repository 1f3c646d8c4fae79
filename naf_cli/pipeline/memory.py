"""How much memory a run may use, and how much it has used."""

from __future__ import annotations

import os
import resource
import sys

import torch


def available_bytes(device: torch.device) -> int:
    """Memory a forward can take now: free CUDA memory, or the system's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
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
        if abs(n_bytes) < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"
