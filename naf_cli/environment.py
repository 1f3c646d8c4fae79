"""What this installation can run: versions, device, natten, attention backend."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

import naf_cli
from naf_cli import openmp_spin
from naf_cli.cpu_threads import usable_cpus


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


def attention_report(device: str) -> dict[str, str]:
    """Which attention backend NAF chooses at the paper's setting (features [384, 28, 28], x16)
    on ``device``, and why each other backend would be refused."""
    from naf_cli.modeling.attention import BACKENDS, AttentionProblem, choose_backend, refusals

    problem = AttentionProblem(
        batch=1, qk_dim=256, value_dim=384, out_size=(448, 448), low_size=(28, 28), num_heads=4, kernel_size=9,
        device_type=torch.device(device).type, element_size=4, needs_grad=False,
    )
    chosen = choose_backend(problem)
    report = {"attention backend": f"{chosen.name}: {chosen.description}"}
    for name, reason in refusals(problem).items():
        if name != chosen.name:
            report[f"  {name}"] = f"refused: {reason}" if reason else f"can run, not chosen (lower preference: {BACKENDS[name].description})"
    return report


def convolution_report(device: str) -> dict[str, str]:
    """How NAF's encoder convolves in float32 on ``device`` (Winograd or direct, and why), and
    the OpenMP spin setting that decides how much Winograd gains."""
    from naf_cli.modeling.encoder_convolution import CONVOLUTIONS, DIRECT, WINOGRAD, winograd_refusal

    reason = winograd_refusal(torch.device(device), torch.float32)
    route = f"{WINOGRAD}: {CONVOLUTIONS[WINOGRAD]}" if reason is None else f"{DIRECT} ({reason})"
    return {"encoder convolution": route, "openmp idle spin": openmp_spin.describe()}


def fused_kernels_report(device: str) -> dict[str, str]:
    """Which of NAF's fused kernels a default module uses on ``device`` (``modeling.fused_kernels``),
    and the C++ compiler inductor would build CPU kernels with."""
    from naf_cli.modeling.fused_kernels import KernelChoice, cxx_compiler

    return {
        "fused kernels": KernelChoice(None).describe(torch.device(device)),
        "c++ compiler": cxx_compiler() or "none found (torch.compile cannot build CPU kernels; NAF's fused kernels stay eager)",
    }


def environment_report(device: str = "cpu") -> dict[str, str]:
    cuda = torch.cuda.is_available()
    return {
        "naf-cli": naf_cli.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device + (f" ({torch.cuda.get_device_name(0)})" if device.startswith("cuda") and cuda else ""),
        "cuda available": str(cuda),
        "natten": natten_status(),
        **attention_report(device),
        **convolution_report(device),
        **fused_kernels_report(device),
        "cpu threads": f"{torch.get_num_threads()} of {usable_cpus()} usable CPUs (NAF uses fewer while other processes keep CPUs busy; its Winograd layers keep NNPACK's pool)",
    }
