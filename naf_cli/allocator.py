"""Keep freed memory in the process instead of handing it back to the system at once.

glibc returns large freed blocks to the kernel (``munmap``, heap trimming); the next
allocation of the same size then page-faults every page again. NAF's banded forward frees
and reallocates buffers of a few megabytes per band, where this cost rivals the arithmetic.
Raising the mmap and trim thresholds keeps those blocks for reuse; peak memory is unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest value glibc accepts on 64-bit systems
TRIM_THRESHOLD = 1 << 30


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_memory() -> None:
    """Give the pages of freed blocks back to the system (glibc ``malloc_trim``): between
    phases that free much and then allocate differently, so their peaks do not add up."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the thresholds once; False where the C library is not glibc (nothing changes)."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
