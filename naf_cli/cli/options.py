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
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
