"""Options shared by several commands, as Annotated aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Vfm = Annotated[str, typer.Option("--vfm", help="Backbone short name (see `naf models`).")]
VfmWeights = Annotated[
    Optional[Path],
    typer.Option("--vfm-weights", help="Local backbone weights file (offline use); default: the hub, or the packaged effnet-lite0."),
]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto (cuda when available).")]
Checkpoint = Annotated[
    Optional[Path], typer.Option("--checkpoint", help="NAF weights (.safetensors or .pth); default: the shipped checkpoint.")
]


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; a device that cannot run here is a NafError."""
    import torch

    from naf_cli.errors import NafError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NafError(f"unknown device '{name}'; fix: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NafError(f"--device {name} asked for, but CUDA is not available on this machine; fix: use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise NafError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here; fix: pick an index below that")
    return name
