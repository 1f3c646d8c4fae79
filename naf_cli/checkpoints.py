"""NAF weights: a registry of named checkpoints, URLs fetched once into the torch hub cache,
and saving and loading without running code from the file.

A checkpoint names a registry entry (``naf models``), a file, or a URL. Each file written
here carries its architecture in its metadata, so any of them (a kernel-15 restoration
model included) loads without flags.
"""

from __future__ import annotations

import io
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from naf_cli.defaults import DEFAULT_DENOISER, DEFAULT_NAF
from naf_cli.disk import replacing
from naf_cli.errors import OptionError, WeightsError
from naf_cli.modeling.naf import NAF
from naf_cli.modeling.restoration import Denoiser
from naf_cli.package_files import package_file
from naf_cli.weight_files import describe_mismatch, read_state_dict, shorten

DEFAULT_CHECKPOINT = "naf-effnet-lite0-lite1.safetensors"
CHECKPOINT_FIX = "pass a checkpoint name (naf models), a NAF weights file (.safetensors or .pth) or a URL"
RELEASE_URL = "https://github.com/valeoai/NAF/releases/download/model/naf_release.pth"
FETCH_TIMEOUT = 60.0  # seconds without an answer before a download is given up
# NAF constructor parameters a checkpoint's metadata may set
ARCHITECTURE_KEYS = ("dim", "num_heads", "kernel_size", "num_blocks", "context_kernel")

__all__ = ["CHECKPOINTS", "DEFAULT_CHECKPOINT", "DEFAULT_DENOISER", "load_denoiser", "load_naf", "packaged_checkpoint", "resolve_checkpoint", "save_denoiser", "save_naf"]


@dataclass(frozen=True)
class CheckpointEntry:
    """A named checkpoint: shipped in the package (``file``, with a model ``card``) or fetched from ``url``."""

    name: str
    summary: str
    file: str = ""
    card: str = ""
    url: str = ""
    task: str = "upsample"


CHECKPOINTS: dict[str, CheckpointEntry] = {entry.name: entry for entry in (
    CheckpointEntry(DEFAULT_NAF, "trained here from scratch on lite0 and lite1 features at x2 and x4 (second "
                    "stage, 8000 CPU steps, training photos only); what auto picks for EfficientNets and CNNs, and load_naf()'s default", file=DEFAULT_CHECKPOINT, card="naf-effnet-lite0-lite1.md"),
    CheckpointEntry("effnet-lite0", "trained here at x2 only on effnet-lite0 features (CPU, 1200 steps): best at x2",
                    file="naf-effnet-lite0.safetensors", card="naf-effnet-lite0.md"),
    CheckpointEntry("release", "the official NAF weights (valeoai/NAF), trained by its authors on DINOv3 ViT-B/16 features; "
                    "what auto picks for ViTs; fetched on first use into the torch hub cache",
                    url=RELEASE_URL),
    CheckpointEntry("mixed", "naf denoise's default: the restoration variant (kernel 15) trained here on Gaussian, "
                    "salt-and-pepper and mixed noise", file="naf-denoise-mixed.safetensors", card="naf-denoise.md", task="denoise"),
)}


def packaged_checkpoint(name: str = DEFAULT_CHECKPOINT) -> Path:
    """Path of a checkpoint shipped in the wheel (the repository's ``models/`` folder)."""
    return package_file(name)


def cached_path(url: str) -> Path:
    """Where ``fetch`` keeps the file of ``url``: the torch hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    name = os.path.basename(urlparse(url).path)
    if not name:
        raise WeightsError(f"{url} does not name a file; fix: {CHECKPOINT_FIX}")
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def fetch(url: str, named: bool = False) -> Path:
    """The file at ``url`` in the torch hub cache, fetched the first time. ``named``: a registry
    entry's URL, whose fix also offers the shipped weights."""
    target = cached_path(url)
    if target.is_file():
        return target
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(FETCH_TIMEOUT)  # urllib waits forever on a network that drops packets
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as err:  # urllib raises many types for network and HTTP errors
        fix = (f"connect to the internet once (the file is then kept), or copy {target.name} into {target.parent} from "
               f"a machine that has it, or pass --checkpoint {DEFAULT_NAF} (the shipped weights)" if named else
               "connect to the internet, or fetch it elsewhere and pass --checkpoint FILE")
        raise WeightsError(f"cannot fetch {url} ({shorten(f'{type(err).__name__}: {err}', 120)}); fix: {fix}") from err
    finally:
        socket.setdefaulttimeout(previous)
    return target


def resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    """The weights file of a registry name, a URL (fetched once) or a path; None: the default."""
    if checkpoint is None:
        return packaged_checkpoint()
    text = str(checkpoint)
    if text == "auto":
        raise WeightsError("--checkpoint auto picks upsampling weights by backbone and does not apply here; fix: pass a "
                           "checkpoint name (naf models), a file or a URL")
    entry = CHECKPOINTS.get(text)
    if entry is not None:
        return packaged_checkpoint(entry.file) if entry.file else fetch(entry.url, named=True)
    if "://" in text:
        return fetch(text)
    return Path(text)


def _metadata(path: Path) -> dict[str, str]:
    """A safetensors file's metadata ({} for other files and unreadable ones)."""
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:  # an unreadable file is reported by read_state_dict, with the reason
        return {}


def checkpoint_task(path: Path) -> str:
    """``upsample`` or ``denoise``: what the weights were trained for (files without the key: upsample)."""
    return _metadata(path).get("task", "upsample")


def architecture(path: Path) -> dict[str, int]:
    """The NAF constructor parameters recorded in a safetensors file's metadata ({} when none are)."""
    recorded = _metadata(path).get("architecture")
    if not recorded:
        return {}
    values = json.loads(recorded)
    return {key: int(values[key]) for key in ARCHITECTURE_KEYS if key in values}


def load_naf(path: str | Path | None = None, kernel_size: int | None = None, device: str | torch.device = "cpu",
             backbone: str | None = None) -> NAF:
    """A NAF in eval mode with the weights of ``path`` (a registry name, a URL or a file; default:
    the shipped checkpoint, or ``"auto"`` when ``backbone`` is given: the weights that suit it, see
    ``naf_cli.checkpoint_choice``), loaded strictly. The architecture comes from the file's
    metadata (``kernel_size`` overrides it); files without one are the reference layout (kernel 9)."""
    from naf_cli.checkpoint_choice import AUTO, resolve_auto

    if path is None and backbone is not None:
        path = AUTO
    if str(path) == AUTO and backbone is None:
        raise OptionError("load_naf('auto') picks weights by backbone; fix: pass backbone= (e.g. 'dinov3-b'), or a "
                          "checkpoint name (naf models), a file or a URL")
    name, _ = resolve_auto(str(path) if path is not None else None, backbone)
    return _load(resolve_checkpoint(name), "upsample", kernel_size, device)


def _load(path: Path, task: str, kernel_size: int | None, device: str | torch.device) -> NAF:
    state = read_state_dict(path, "NAF checkpoint", CHECKPOINT_FIX)
    found = checkpoint_task(path)
    if found != task:
        command = "naf denoise" if found == "denoise" else "naf upsample or naf extract"
        raise WeightsError(f"{path} holds {found} weights, not {task} weights; fix: use it with {command}, "
                           f"or pass a {task} checkpoint (naf models)")
    settings = architecture(path)
    if kernel_size is not None:
        settings["kernel_size"] = kernel_size
    model = NAF(**settings)  # type: ignore[arg-type]
    expected = {key: value.shape for key, value in model.state_dict().items()}
    mismatch = describe_mismatch(expected, state)
    if mismatch:
        raise WeightsError(f"{path} does not fit the NAF architecture: {mismatch}; fix: {CHECKPOINT_FIX}")
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)


def load_denoiser(path: str | Path | None = None, device: str | torch.device = "cpu") -> Denoiser:
    """The restoration variant in eval mode with the weights of ``path`` (a registry name, a URL
    or a file; default: ``DEFAULT_DENOISER``), loaded strictly; the file must say it is a denoiser."""
    resolved = resolve_checkpoint(path if path is not None else DEFAULT_DENOISER)
    return Denoiser(_load(resolved, "denoise", None, device)).eval()


def save_denoiser(model: Denoiser, path: Path, metadata: dict[str, str] | None = None) -> None:
    """``save_naf`` of the denoiser's NAF, marked ``task: denoise``."""
    save_naf(model.naf, path, {**(metadata or {}), "task": "denoise"})


def save_naf(model: NAF, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write weights atomically: ``.safetensors`` (string metadata, the architecture included) or a
    plain ``.pth`` state dict."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # serialised in memory, then written: a full disk is then an OSError with its cause, not a
    # serialiser's own error
    if path.suffix == ".safetensors":
        data = save(state, metadata={"architecture": json.dumps(model.architecture()), **(metadata or {})})
    else:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
    with replacing(path) as tmp:
        tmp.write_bytes(data)
