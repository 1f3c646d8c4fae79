"""NAF beside two peer upsamplers, AnyUp and JAFAR, on this CPU: ms per image and peak memory.

The peers' code is not part of this repository: it is imported at run time from checkouts of
their public repositories, which you fetch first::

    git clone https://github.com/wimmerth/anyup /tmp/peers/anyup
    git clone https://github.com/PaulCouairon/JAFAR /tmp/peers/JAFAR
    pip install einops   # JAFAR's model code imports it
    python benchmarks/bench_peers.py --anyup /tmp/peers/anyup --jafar /tmp/peers/JAFAR

The setting is the paper's table: random float32 features [384, 28, 28], a random 448 x 448
guidance image in [0, 1], output (28 * ratio)^2 for each ``--ratio`` (default 16 32), fp32,
torch's default thread count, ``--repeats`` timed forwards (default 3) after one warm-up, median
reported, under ``torch.inference_mode()``. Each forward gets fresh inputs (the same seeds for
every contender); making them is not timed.

Contenders, run interleaved for each ratio (naf, anyup, jafar), each row in a fresh process so
that no row inherits another's peak memory:

- ``naf``: ``naf_cli.checkpoints.load_naf()``, the shipped weights. NAF normalises the [0, 1]
  image itself, inside its forward.
- ``anyup``: ``anyup.model.AnyUp()``, its default architecture (the paper's model, without
  NATTEN), random weights; called as ``model(image, features, output_size=(H, W))``.
- ``jafar``: ``src.upsampler.JAFAR(v_dim=channels)`` (its default ``v_dim`` is 384, the
  paper's channels), random weights; called as ``model(image, features, (H, W))``. JAFAR's
  ``create_coordinate`` defaults to ``device="cuda"`` and its forward does not pass a device,
  so on a CPU this script rebinds that name in JAFAR's module to the same function with
  ``device="cpu"`` (nothing else of JAFAR changes).

Both peers' READMEs ask for an ImageNet-normalised image; the peers get the [0, 1] image
normalised inside the timed region, as NAF does it inside its forward.

Peak memory is the process's resident high-water mark (VmHWM) above its resident size just
before the first forward. A row predicted to need more than the available memory is not run;
a row that runs out of memory, dies or times out says so in its status instead of ending the table.
Progress (one line per finished forward) goes to stderr; the table (or ``--json``) to stdout.

Smoke test (seconds): ``--channels 32 --lr-size 8 --image-size 64 --ratio 2 --repeats 1``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import json
import signal
import statistics
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from naf_cli.bench.cases import BenchCase, predicted_bytes
from naf_cli.bench.machine import machine_report
from naf_cli.bench.measure import PROGRESS, _inputs, _reset_high_water_mark, _status_kib, forward_line, timed
from naf_cli.bench.run import MEMORY_MARGIN
from naf_cli.errors import first_line
from naf_cli.modeling import NAF
from naf_cli.pipeline.memory import available_bytes, gib, is_out_of_memory

CONTENDERS = ("naf", "anyup", "jafar")
PEERS = {  # name -> (repository to clone, the module in it that holds the model class, the class)
    "anyup": ("https://github.com/wimmerth/anyup", "anyup.model", "AnyUp"),
    "jafar": ("https://github.com/PaulCouairon/JAFAR", "src.upsampler.jafar", "JAFAR"),
}
WARMUP = 1
RESULT = "bench-peers-result: "  # marks the worker's answer on its stdout (peer code may print too)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# model(image in [0, 1], features, (H, W)) -> upsampled features
Call = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]


# ---------------------------------------------------------------- worker: one row, in its own process


def _import_peer(name: str, checkout: str) -> Any:
    """The peer's module holding its model class, imported from the checkout ``checkout``."""
    _, module_name, _ = PEERS[name]
    root = Path(checkout).resolve()
    sys.path.insert(0, str(root))
    module = importlib.import_module(module_name)
    found = Path(module.__file__ or "").resolve()
    if root not in found.parents:
        raise ImportError(f"{module_name} came from {found}, not from the checkout {root}")
    return module


def _normalised(model: nn.Module) -> Call:
    """Call a peer with the ImageNet-normalised image, as its README asks."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def call(image: torch.Tensor, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return model((image - mean) / std, features, size)

    return call


def build(name: str, checkout: str | None, channels: int) -> tuple[nn.Module, Call]:
    """The contender ``name`` in eval mode, and how to call it."""
    if name == "naf":
        from naf_cli.checkpoints import load_naf

        naf = load_naf()
        return naf, naf
    module = _import_peer(name, str(checkout))
    model_class = getattr(module, PEERS[name][2])
    if name == "anyup":
        # anyup/model.py: AnyUp(input_dim=3, qk_dim=128, ..., use_natten=False); hubconf.py's anyup() builds AnyUp()
        return (model := model_class().eval()), _normalised(model)
    # src/upsampler/jafar.py: JAFAR(input_dim=3, qk_dim=128, v_dim=384, ...); v_dim is the features' channels
    module.create_coordinate = functools.partial(module.create_coordinate, device="cpu")  # its default is "cuda"
    return (model := model_class(v_dim=channels).eval()), _normalised(model)


def peer_bytes(model: nn.Module, case: BenchCase) -> int:
    """Rough memory of a peer's forward: both run one ``nn.MultiheadAttention`` with its weights
    over all keys (every output pixel attends to all ``lr_size^2`` features), which holds the
    per-head scores and their softmax, the head average and (AnyUp) a float window mask, next to a
    few query maps at the output size and the image encoder's maps at the image size."""
    attention = next(m for m in model.modules() if isinstance(m, nn.MultiheadAttention))
    heads, dim = attention.num_heads, attention.embed_dim
    queries, keys, pixels = case.output_size**2, case.lr_size**2, case.image_size**2
    scores = queries * keys * (2 * heads + 2)
    maps = queries * (6 * dim + 2 * case.channels) + pixels * 4 * dim
    return case.batch * 4 * (scores + maps)


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says memory ran out (torch's CPU allocator words it "can't allocate memory")."""
    return is_out_of_memory(err) or "can't allocate memory" in str(err)


def run_row(request: dict[str, Any]) -> dict[str, Any]:
    """Build one contender, check its predicted memory, then time warm-up + repeats forwards here."""
    name, repeats = request["name"], request["repeats"]
    case = BenchCase(
        name,
        request["ratio"],
        backend="auto" if name == "naf" else "-",
        channels=request["channels"],
        lr_size=request["lr_size"],
        image_size=request["image_size"],
    )
    try:
        model, call = build(name, request.get("checkout"), case.channels)
    except Exception as err:
        return {"status": f"cannot load: {type(err).__name__}: {first_line(err)}"}
    need = predicted_bytes(case, model) if isinstance(model, NAF) else peer_bytes(model, case)
    have = available_bytes(torch.device("cpu"))
    if need > MEMORY_MARGIN * have:
        return {"status": f"out of memory: predicted {gib(need)}, {gib(have)} available (not run)"}
    size = (case.output_size, case.output_size)
    _reset_high_water_mark()
    start = _status_kib("VmRSS")
    timings: list[float] = []
    try:
        with torch.inference_mode():
            for index in range(WARMUP + repeats):
                image, features = _inputs(case, 1000 + index if index < WARMUP else index - WARMUP)
                with timed(torch.device("cpu")) as elapsed:
                    out = call(image, features, size)
                    del out
                if index >= WARMUP:
                    timings.append(elapsed[0])
                print(PROGRESS + forward_line(index, WARMUP + repeats, WARMUP, elapsed[0]), file=sys.stderr, flush=True)
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        return {"status": f"out of memory: {first_line(err)}"}
    return {
        "ms_per_image": round(statistics.median(timings), 1),
        "peak_mb": round((_status_kib("VmHWM") - start) / 1024, 1),
        "status": "ok",
    }


def worker(request: str) -> None:
    """``--worker JSON``: one row; its answer is the last ``RESULT`` line on stdout."""
    from naf_cli.allocator import keep_freed_memory

    keep_freed_memory()  # what NAF's own benchmark worker does, here for every contender alike
    try:
        row = run_row(json.loads(request))
    except Exception as err:
        traceback.print_exc()
        row = {"status": f"failed: {type(err).__name__}: {first_line(err)}"}
    print(RESULT + json.dumps(row), flush=True)


# ---------------------------------------------------------------- parent: the table


def run_isolated(request: dict[str, Any], timeout: float, label: str) -> dict[str, Any]:
    """``run_row`` in a fresh Python process; its progress lines go to stderr as they come."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--worker", json.dumps(request)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    said: list[str] = []  # the worker's last other stderr lines, for a failure's status
    answers: list[str] = []

    def relay() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith(PROGRESS):
                print(f"[{label}]{line[len(PROGRESS) :].rstrip()}", file=sys.stderr, flush=True)
            elif line.strip():
                said[:] = [*said[-4:], line.strip()]

    def collect() -> None:
        assert process.stdout is not None
        answers.extend(line[len(RESULT) :] for line in process.stdout if line.startswith(RESULT))

    readers = [threading.Thread(target=relay, daemon=True), threading.Thread(target=collect, daemon=True)]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout:g} s"}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for reader in readers:
            reader.join(timeout=5)
    if answers:
        return dict(json.loads(answers[-1]))
    if process.returncode < 0:
        return {"status": f"out of memory: killed by {signal.Signals(-process.returncode).name}"}
    last = said[-1] if said else f"exit status {process.returncode}, no output"
    return {"status": ("out of memory: " if "memory" in last.lower() else "failed: ") + last}


def commit(checkout: str | None) -> str:
    """The checkout's git commit, or why there is none."""
    if checkout is None:
        return "not given"
    try:
        found = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return found.stdout.strip() if found.returncode == 0 else "unknown (not a git checkout)"


def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (ratio, contender) row, ratios outer, contenders interleaved."""
    checkouts = {"anyup": args.anyup, "jafar": args.jafar}
    rows = []
    for ratio in args.ratio:
        for name in args.contenders:
            out = max(1, round(args.lr_size * ratio))
            row: dict[str, Any] = {
                "upsampler": name,
                "ratio": ratio,
                "output": f"{out} x {out}",
                "ms_per_image": None,
                "peak_mb": None,
            }
            checkout = checkouts.get(name)
            label = f"{name} x{ratio:g}"
            if name in PEERS and (checkout is None or not Path(checkout).is_dir()):
                row["status"] = f"not run: pass --{name} DIR, a checkout of {PEERS[name][0]} (git clone it)"
            else:
                print(f"[{label}] {out} x {out}: starting", file=sys.stderr, flush=True)
                request = {
                    "name": name,
                    "ratio": ratio,
                    "checkout": checkout,
                    "channels": args.channels,
                    "lr_size": args.lr_size,
                    "image_size": args.image_size,
                    "repeats": args.repeats,
                }
                row.update(run_isolated(request, args.timeout, label))
            print(f"[{label}] {row['status']}", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def header(args: argparse.Namespace) -> dict[str, Any]:
    """The machine, the date, the setting and the peers' commits."""
    machine = machine_report("cpu")
    return {
        "machine": {key: machine[key] for key in ("cpu", "cores", "cpu_flags", "torch", "torch_threads")},
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "setting": f"features [{args.channels}, {args.lr_size}, {args.lr_size}], image {args.image_size} x {args.image_size}, "
        f"fp32, {args.repeats} timed after {WARMUP} warm-up, median",
        "commits": {"anyup": commit(args.anyup), "jafar": commit(args.jafar)},
    }


def markdown(info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """One line naming the machine, date and commits, then the table."""
    machine, commits = info["machine"], info["commits"]
    lines = [
        f"{machine['cpu']}, {machine['cores']} cores ({machine['torch_threads']} torch threads), "
        f"flags {' '.join(machine['cpu_flags']) or 'none'}, torch {machine['torch']}; {info['date']}; "
        f"anyup {commits['anyup']}; jafar {commits['jafar']}; {info['setting']}",
        "",
        "| upsampler | ratio | output | ms/img | peak MB above start | status |",
        "|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        ms = "-" if row["ms_per_image"] is None else f"{row['ms_per_image']:,.1f}"
        peak = "-" if row["peak_mb"] is None else f"{row['peak_mb']:,.1f}"
        status = str(row["status"]).replace("|", "\\|")
        lines.append(f"| {row['upsampler']} | {row['ratio']:g} | {row['output']} | {ms} | {peak} | {status} |")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--anyup", metavar="DIR", help="checkout of https://github.com/wimmerth/anyup")
    parser.add_argument("--jafar", metavar="DIR", help="checkout of https://github.com/PaulCouairon/JAFAR")
    parser.add_argument("--ratio", type=float, nargs="+", default=[16, 32], help="upsampling ratios (default 16 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per row after 1 warm-up (default 3)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a row may take (default 600)")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--channels", type=int, default=384, help="feature channels (default 384; smaller for a smoke test)")
    parser.add_argument("--lr-size", type=int, default=28, help="feature side (default 28)")
    parser.add_argument("--image-size", type=int, default=448, help="guidance image side (default 448)")
    parser.add_argument("--json", action="store_true", help="print the header and rows as JSON instead of the table")
    parser.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.channels < 1 or args.lr_size < 1 or args.image_size < 1 or min(args.ratio) <= 0:
        parser.error("--repeats, --channels, --lr-size, --image-size and --ratio must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.worker is not None:
        worker(args.worker)
        return
    info = header(args)
    rows = bench(args)
    print(json.dumps({**info, "rows": rows}, indent=2) if args.json else markdown(info, rows))


if __name__ == "__main__":
    main()
