"""The machine a benchmark ran on, for its record."""

from __future__ import annotations

import os
import platform

import torch

from naf_cli.modeling.attention.precision import cpu_has_bf16_hardware

# CPU flags that decide which convolution and matmul kernels run fast
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and which of ``RELEVANT_FLAGS`` it reports (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    return model, [flag for flag in RELEVANT_FLAGS if flag in flags]


def machine_report(device: str) -> dict[str, object]:
    """CPU model and flags, cores, torch version and build capability, and the device."""
    from naf_cli.environment import convolution_report

    model, flags = cpu_model_and_flags()
    convolution = convolution_report(device)
    report: dict[str, object] = {
        "cpu": model,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_hardware": cpu_has_bf16_hardware(),  # whether bf16 autocast runs the attention in bf16 here
        "device": device,
        # how NAF's encoder convolves here, and the OpenMP setting Winograd's gain depends on
        "encoder_convolution": convolution["encoder convolution"],
        "openmp_spin": convolution["openmp idle spin"],
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return report
