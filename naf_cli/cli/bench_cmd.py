"""`naf bench`: speed and memory of upsamplers, as a Rich table or JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from naf_cli.cli.options import Device

if TYPE_CHECKING:
    from naf_cli.bench.cases import BenchCase


def bench(
    ratio: Annotated[Optional[list[float]], typer.Option("--ratio", help="Upsampling ratios, e.g. --ratio 2 8 16 32 72.")] = None,
    upsampler: Annotated[
        Optional[list[str]], typer.Option("--upsampler", help="naf, nearest, bilinear, bicubic, jbu, jbf (several allowed; jbu and jbf with their shipped settings). \\[default: naf bilinear]"),
    ] = None,
    backend: Annotated[
        Optional[list[str]],
        typer.Option("--backend", help="NAF attention backends: auto, cells, natten, reference, or all. \\[default: auto]"),
    ] = None,
    channels: Annotated[int, typer.Option("--channels", help="Feature channels.")] = 384,
    lr_size: Annotated[int, typer.Option("--lr-size", help="Side of the low-resolution feature grid.")] = 28,
    image_size: Annotated[int, typer.Option("--image-size", help="Side of the guidance photo.")] = 448,
    batch: Annotated[int, typer.Option("--batch", help="Images per forward.")] = 1,
    precision: Annotated[str, typer.Option("--precision", help="fp32, bf16 or fp16 (autocast).")] = "fp32",
    device: Device = "auto",
    repeats: Annotated[int, typer.Option("--repeats", help="Timed forwards per row (the median is reported).")] = 3,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed forwards first.")] = 1,
    banded: Annotated[bool, typer.Option("--banded", help="NAF through its band API into a sink: the output is never held whole.")] = False,
    floor: Annotated[bool, typer.Option("--floor/--no-floor", help="A floor row per ratio: the encoder's plain convolutions.")] = True,
    compile_naf: Annotated[bool, typer.Option("--compile", help="NAF rows with compiled fused kernels (torch.compile, inductor: on a CPU it needs a C++ compiler); the row records the first call's seconds, compile included. Without it NAF rows are eager.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print {machine, rows} as JSON instead of a table.")] = False,
) -> None:
    """Time upsamplers on random inputs: ms per image, FPS, peak memory, GFLOPs, parameters.

    Default: the paper's setting, features [384, 28, 28] and a 448 x 448 photo, at x16.
    Every timed forward gets a fresh random image. On a CPU every row runs in its own process,
    so peaks do not carry over. Rows predicted not to fit in memory are listed, not run.
    """
    import json
    import sys

    from naf_cli.bench.cases import PRECISIONS, UPSAMPLERS, expand_cases
    from naf_cli.bench.machine import machine_report
    from naf_cli.bench.run import bench_rows
    from naf_cli.cli.errors import EXIT_INTERRUPTED
    from naf_cli.devices import resolve_device
    from naf_cli.errors import OptionError
    from naf_cli.modeling.attention import BACKENDS
    from naf_cli.pipeline.sizes import check_positive

    ratios = ratio or [16.0]
    upsamplers = upsampler or ["naf", "bilinear"]
    backends = backend or ["auto"]
    if "all" in backends:
        backends = list(BACKENDS)
    for value in ratios:
        check_positive("--ratio", value)
    for name, value in (("--channels", channels), ("--lr-size", lr_size), ("--image-size", image_size), ("--batch", batch),
                        ("--repeats", repeats)):
        check_positive(name, value)
    if precision not in PRECISIONS:
        raise OptionError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    for name in upsamplers:
        if name not in UPSAMPLERS:
            raise OptionError(f"unknown upsampler '{name}' for bench; known: {', '.join(UPSAMPLERS)}")
    for name in backends:
        if name != "auto" and name not in BACKENDS:
            raise OptionError(f"unknown attention backend '{name}'; known: auto, all, {', '.join(BACKENDS)}")
    if "naf" in upsamplers and channels % 4:
        raise OptionError(f"NAF needs --channels divisible by 4, got {channels}")
    target = resolve_device(device)
    cases = expand_cases(
        upsamplers, backends, ratios, channels=channels, lr_size=lr_size, batch=batch, precision=precision,
        device=target, image_size=image_size, banded=banded, floor=floor, compiled=compile_naf,
    )

    def progress(index: int, total: int, case: BenchCase) -> None:
        print(f"[{index + 1}/{total}] {_label(case)}", file=sys.stderr, flush=True)

    def said(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rows: list[dict[str, object]] = []
    interrupted = False
    try:
        for row in bench_rows(cases, repeats, warmup, progress, said):
            rows.append(row)
    except KeyboardInterrupt:  # Ctrl-C or a scheduler's SIGTERM: the finished rows are still a table
        interrupted = True
    report = {"machine": machine_report(target), "rows": rows, "interrupted": interrupted}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _render(report)
    if interrupted:
        printed = " (printed above)" if rows else ""
        print(f"error: interrupted after {len(rows)} of {len(cases)} rows{printed}; fix: rerun for the rest, "
              "e.g. with fewer --ratio or --upsampler values", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED)


def _label(case: BenchCase) -> str:
    backend = f" [{case.backend}]" if case.backend != "-" else ""
    compiled = ", compiled" if case.compiled else ""
    return f"{case.upsampler}{backend} x{case.ratio:g} -> {case.output_size}x{case.output_size}, {case.precision}{compiled}"


def _number(value: object, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _render(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    machine = report["machine"]
    title = f"{machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}, {machine['device']}"
    if "gpu" in machine:
        title += f" ({machine['gpu']})"
    table = Table(title=title, title_justify="left")
    for name in ("upsampler", "backend", "ratio", "output", "prec.", "ms/img", "FPS", "peak MB", "> output MB",
                 "GFLOPs", "params", "status"):
        table.add_column(name, justify="left" if name in ("upsampler", "backend", "prec.", "status") else "right",
                         overflow="fold")
    for row in report["rows"]:
        above = None if row["peak_memory_mb"] is None else row["peak_memory_mb"] - row["output_mb"]
        compiled = f", compiled in {row['compile_seconds']:,.1f} s" if row.get("compile_seconds") is not None else ""
        table.add_row(
            row["upsampler"], str(row["backend"]) + compiled, f"x{row['ratio']:g}", f"{row['output_size']}x{row['output_size']}",
            row["precision"], _number(row["ms_per_image"]), _number(row["fps"], 2), _number(row["peak_memory_mb"], 0),
            _number(above, 0), _number(row["gflops"], 1), _number(row["params"]), row["status"],
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped into a file: keep every column readable
    console.print(table)
    bf16 = "bf16 in hardware: the attention runs in bf16 under autocast" if machine["cpu_bf16_hardware"] else (
        "no bf16 in hardware: the attention stays fp32 under autocast on this CPU")
    console.print(f"CPU flags: {', '.join(machine['cpu_flags']) or 'none of interest'} ({bf16}).")
    for name, settings in dict.fromkeys((row["upsampler"], row.get("settings")) for row in report["rows"]):
        if settings:
            console.print(f"{name}: {settings} (its shipped settings, as naf upsample --upsampler {name} uses them).")
    console.print(f"NAF's encoder convolution in fp32 rows: {machine['encoder_convolution']} (bf16/fp16 rows: direct); "
                  f"OpenMP idle spin: {machine['openmp_spin']}.")
    console.print("floor: the encoder's convolutions alone (plain, no norms, no attention) on the same guidance image, "
                  "by the direct route (oneDNN): what any upsampler with this encoder costs at least, unless it "
                  "convolves its 3x3 layers by Winograd, as NAF does where it can. ms/img: median of the timed forwards. "
                  "peak MB: the most memory in use above what was in use before the first forward, output included; "
                  "> output MB: that peak less the output tensor itself (what the upsampler needs besides its result).")
