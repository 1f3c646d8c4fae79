"""The dtype the attention's matrix products run in.

Autocast casts the inputs of ``torch.bmm``, but not of its ``out=`` form, which the
attention uses to reuse buffers; so the backends ask here and cast themselves.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def cpu_has_bf16_hardware() -> bool:
    """bf16 arithmetic in hardware (AVX512-BF16 or AMX): there bf16 matrix products beat fp32;
    elsewhere they are emulated and slower, so autocast leaves the attention in fp32."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def reduced_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype for the attention's matrix products on ``device_type``, or None for
    the inputs' own dtype (autocast off; a CPU without bf16 hardware; fp16 on a CPU)."""
    if not torch.is_autocast_enabled(device_type):
        return None
    dtype = torch.get_autocast_dtype(device_type)
    if device_type == "cpu" and not (dtype == torch.bfloat16 and cpu_has_bf16_hardware()):
        return None
    return dtype


def autocast_off(device_type: str) -> contextlib.AbstractContextManager[object]:
    """A block whose dtypes its code sets: autocast paused where it is on."""
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)
