"""Which torch device a run uses, from what the user typed."""

from __future__ import annotations


def resolve_device(name: str) -> str:
    """``auto`` -> CUDA, then MPS, then CPU; a device that cannot run here is a NafError.

    ``cuda:N`` becomes this process's current CUDA device: work without an explicit device
    (events, the loader's pinning thread) then goes to GPU N, not GPU 0."""
    import torch

    from naf_cli.errors import OptionError
    from naf_cli.pipeline.memory import make_current

    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(f"unknown device '{name}'; fix: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {name} asked for, but CUDA is not available on this machine; fix: use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise OptionError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here; fix: pick an index below that")
    if device.type == "mps" and not mps_ok:
        raise OptionError(f"--device {name} asked for, but MPS (Apple GPU) is not available on this machine; fix: use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise OptionError(f"--device {name}: naf runs on cpu, cuda or mps; fix: use --device auto")
    make_current(device)
    return name
