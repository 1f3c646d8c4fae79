"""Saving and loading NAF weights without running code from the file."""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from naf_cli.errors import WeightsError
from naf_cli.modeling.naf import NAF

DEFAULT_CHECKPOINT = "naf-effnet-lite0.safetensors"


def packaged_checkpoint(name: str = DEFAULT_CHECKPOINT) -> Path:
    """Path of a checkpoint shipped in the wheel (the repository's ``models/`` folder)."""
    return Path(str(resources.files("naf_cli.models").joinpath(name)))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A NAF state dict from ``.safetensors`` or a ``.pth``/``.pt`` loaded with ``weights_only=True``.

    A training state written by ``naf train`` is accepted too (its ``model`` entry is used).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"NAF checkpoint {path} does not exist; fix: check the --checkpoint path")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types for corrupt files
        raise WeightsError(f"cannot read NAF checkpoint {path}: {type(err).__name__}: {str(err)[:200]}; fix: re-download or re-export it") from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a NAF state dict; fix: pass a .safetensors or .pth file of NAF weights")
    return state


def load_naf(path: str | Path | None = None, kernel_size: int = 9, device: str | torch.device = "cpu") -> NAF:
    """A NAF in eval mode with weights from ``path`` (default: the shipped checkpoint), loaded strictly."""
    path = Path(path) if path is not None else packaged_checkpoint()
    state = read_state_dict(path)
    model = NAF(kernel_size=kernel_size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1:2] or [str(err)[:200]]
        raise WeightsError(f"{path} does not fit the NAF architecture: {first[0].strip()}; fix: pass a NAF checkpoint") from err
    return model.eval().to(device)


def save_naf(model: NAF, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write weights atomically: ``.safetensors`` (with string metadata) or a plain ``.pth`` state dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        save_file(state, str(tmp), metadata=metadata or {})
    else:
        torch.save(state, tmp)
    os.replace(tmp, path)
