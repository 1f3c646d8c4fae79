"""Reading weight files safely and saying, in one line, why one does not fit a model.

Used for NAF checkpoints and backbone weights alike: the format is sniffed from the
file's first bytes, pickles are loaded with ``weights_only=True`` (no code runs), and a
mismatch is described by counts of missing and unexpected keys with a few examples, and
each differing shape with both shapes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from naf_cli.errors import WeightsError

EXAMPLES = 3


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shorten(text: str, limit: int = 160) -> str:
    """The first line of ``text``, cut at a word boundary with an ellipsis when longer than ``limit``."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0]
    return cut + " ..."


def sniff_format(path: Path) -> str:
    """``safetensors``, ``pytorch`` (zip or legacy pickle), or a description of what the file is."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "pytorch"
    if not head:
        return "an empty file"
    return f"not a weights file (it starts with {head[:8]!r})"


def _safetensors_problem(path: Path) -> str:
    """Why a file that starts like safetensors does not load (header length or JSON)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if 8 + header_len > size:
            return f"truncated safetensors file: its header alone claims {header_len:,} bytes, the file has {size:,}"
        try:
            header = json.loads(handle.read(header_len))
        except ValueError:
            return "corrupt safetensors file: its header is not valid JSON"
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        return f"truncated safetensors file: tensors end at byte {8 + header_len + end:,}, the file has {size:,}"
    return "corrupt safetensors file"


def read_state_dict(path: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from ``.safetensors`` or a PyTorch file, without running code.

    ``what`` names the weights in messages (``NAF checkpoint``), ``fix`` is the advice.
    A training state (``{"model": ...}``) or a ``{"state_dict": ...}`` wrapper is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} {path} does not exist; fix: {fix}")
    kind = sniff_format(path)
    if kind not in ("safetensors", "pytorch"):
        raise WeightsError(f"cannot read {what} {path}: {kind}; fix: {fix}")
    state: Any
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types for corrupt files
        if kind == "safetensors":
            reason = _safetensors_problem(path)
        elif "weights_only" in str(err) or "Unsupported global" in str(err):
            reason = "the pickle holds Python objects, not just tensors, and is refused (it could run code)"
        else:
            reason = f"corrupt or truncated PyTorch file ({type(err).__name__}: {shorten(str(err), 100)})"
        raise WeightsError(f"cannot read {what} {path}: {reason}; fix: {fix}") from err
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{what} {path} holds no state dict of tensors; fix: {fix}")
    return state


def describe_mismatch(
    expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor], allow_unexpected: bool = False
) -> str | None:
    """None when ``state`` has exactly the expected keys and shapes, else one line saying how it differs.

    ``allow_unexpected``: extra tensors are fine (a classifier file feeding a feature extractor).
    """
    missing = [key for key in expected if key not in state]
    unexpected = [] if allow_unexpected else [key for key in state if key not in expected]
    shapes = [
        f"{key}: file {list(state[key].shape)} vs model {list(expected[key])}"
        for key in expected if key in state and tuple(state[key].shape) != tuple(expected[key])
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = ", ..." if len(keys) > EXAMPLES else ""
            parts.append(f"{len(keys)} {label} key(s) (e.g. {', '.join(keys[:EXAMPLES])}{more})")
    if shapes:
        more = "; ..." if len(shapes) > EXAMPLES else ""
        parts.append(f"{len(shapes)} shape mismatch(es) ({'; '.join(shapes[:EXAMPLES])}{more})")
    if not parts:
        return None
    return f"{len(state)} tensors in the file, {len(expected)} expected: " + ", ".join(parts)
