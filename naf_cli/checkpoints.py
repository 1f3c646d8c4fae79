"""Saving and loading NAF weights without running code from the file."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

from naf_cli.errors import WeightsError
from naf_cli.modeling.naf import NAF
from naf_cli.weight_files import describe_mismatch, read_state_dict

DEFAULT_CHECKPOINT = "naf-effnet-lite0.safetensors"
CHECKPOINT_FIX = "pass a NAF checkpoint (.safetensors or .pth), or omit --checkpoint to use the shipped one"

__all__ = ["DEFAULT_CHECKPOINT", "load_naf", "packaged_checkpoint", "save_naf"]


def packaged_checkpoint(name: str = DEFAULT_CHECKPOINT) -> Path:
    """Path of a checkpoint shipped in the wheel (the repository's ``models/`` folder)."""
    return Path(str(resources.files("naf_cli.models").joinpath(name)))


def load_naf(path: str | Path | None = None, kernel_size: int = 9, device: str | torch.device = "cpu") -> NAF:
    """A NAF in eval mode with weights from ``path`` (default: the shipped checkpoint), loaded strictly."""
    path = Path(path) if path is not None else packaged_checkpoint()
    state = read_state_dict(path, "NAF checkpoint", CHECKPOINT_FIX)
    model = NAF(kernel_size=kernel_size)
    expected = {key: value.shape for key, value in model.state_dict().items()}
    mismatch = describe_mismatch(expected, state)
    if mismatch:
        raise WeightsError(f"{path} does not fit the NAF architecture: {mismatch}; fix: {CHECKPOINT_FIX}")
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)


def save_naf(model: NAF, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write weights atomically: ``.safetensors`` (with string metadata) or a plain ``.pth`` state dict."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        save_file(state, str(tmp), metadata=metadata or {})
    else:
        torch.save(state, tmp)
    os.replace(tmp, path)
