"""What this installation can run: versions, device, natten, attention backend."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

import naf_cli


def natten_status() -> str:
    """``not installed``, or natten's version and whether it has compiled (CUDA) kernels."""
    try:
        version = importlib.metadata.version("natten")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
    try:
        import natten
    except Exception as err:  # a broken build must not break `naf env`
        return f"{version}, fails to import ({type(err).__name__})"
    kernels = "compiled kernels" if getattr(natten, "HAS_LIBNATTEN", False) else "pure Python (flex-fna backend only)"
    return f"{version}, {kernels}"


def environment_report(device: str = "cpu") -> dict[str, str]:
    cuda = torch.cuda.is_available()
    return {
        "naf-cli": naf_cli.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device + (f" ({torch.cuda.get_device_name(0)})" if device.startswith("cuda") and cuda else ""),
        "cuda available": str(cuda),
        "natten": natten_status(),
        "attention backend": "cell-grouped scaled_dot_product_attention (plain PyTorch, with autograd)",
        "cpu threads": str(torch.get_num_threads()),
    }
