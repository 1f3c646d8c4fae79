"""What every training task shares: the resumable state, the step loop, the loss log.

A task (feature reconstruction, denoising) supplies one optimiser step and, optionally, a
validation; this module counts the steps and their time, appends ``loss.csv``, calls the
validation every N steps and saves ``train_state.pt`` (weights, optimiser, data generator,
torch's RNG, step, step time, best score) so that a resumed run continues the same sequence.
Each call that starts or resumes the run is a session, recorded in the state and in
``sessions.json`` (from and to which step, when, on which machine): a run moved between
machines (its folder committed to a repository, say) says where each part of it ran.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from naf_cli.disk import replacing

STATE_FILE = "train_state.pt"
LOSS_FILE = "loss.csv"
VALIDATION_FILE = "validation.csv"
BEST_FILE = "best.safetensors"
CURVE_FILE = "curves.png"
FINAL_FILE = "naf.safetensors"  # the weights after the last step, written when every step is done
SESSIONS_FILE = "sessions.json"


LR_SCHEDULES = ("constant", "cosine")


@dataclass
class RunSettings:
    """What every training run takes, whatever the task (``naf train``'s common options).

    ``images`` (a folder) minus ``exclude`` and, with ``split`` (a JSON file with ``train``
    and ``validation`` lists), minus the validation photos, scored every ``validate_every``
    steps; ``crop`` pixels square, ``batch_size`` per step; AdamW at ``lr`` under
    ``lr_schedule``; ``bf16`` autocast; state every ``checkpoint_every`` steps in
    ``out_dir``; ``init`` starts a new run from weights; ``max_minutes`` ends a call early.
    """

    images: str
    out_dir: str
    steps: int = 600
    batch_size: int = 4
    lr: float = 2e-4
    crop: int = 512
    checkpoint_every: int = 25
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    exclude: tuple[str, ...] = ()
    split: str | None = None
    validate_every: int = 0
    init: str | None = None
    max_minutes: float | None = None
    lr_schedule: str = "constant"


def learning_rate(schedule: str, lr: float, step: int, steps: int) -> float:
    """The rate of step ``step`` (0-based) of ``steps``: ``lr`` throughout, or cosine from ``lr`` to 0.

    A function of the step alone, so a resumed run takes the rates of an uninterrupted one.
    """
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
    return lr


def save_state(path: Path, state: dict) -> None:
    """``torch.save`` through a temporary file, so an interruption leaves the previous state whole."""
    buffer = io.BytesIO()  # serialised first: a full disk is an OSError with its cause (see save_naf)
    torch.save(state, buffer)
    with replacing(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def saved_step(out_dir: Path) -> int:
    """The step of the state saved in ``out_dir`` (0 when there is none)."""
    path = Path(out_dir) / STATE_FILE
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"]) if path.exists() else 0


def new_session(step: int, device: str) -> dict[str, object]:
    """A session starting at ``step``: when, on what (CPU model and flags, cores, device) and with
    which torch; no host name (the record goes into shipped weights)."""
    from naf_cli.bench.machine import cpu_model_and_flags

    cpu, flags = cpu_model_and_flags()
    return {"from_step": step, "to_step": step, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "step_seconds": 0.0, "cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "device": device,
            "torch": torch.__version__, "python": platform.python_version()}


@dataclass
class TrainingRun:
    """The state of one run in ``out_dir``; ``best`` is the best validation score so far
    (its sense, lower or higher is better, is the task's); ``sessions``, one entry per call
    that took steps (``new_session``; a call with nothing left to do adds none)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    out_dir: Path
    best: float
    step: int = 0
    elapsed: float = 0.0
    sessions: list[dict[str, object]] = field(default_factory=list)
    _session_start: float | None = field(default=None, repr=False)  # ``elapsed`` when this call's session began

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_FILE

    def resume(self, log: Callable[[str], None]) -> None:
        """Load ``train_state.pt`` when there is one (a new run otherwise).

        Read onto the CPU: the random-number states must stay CPU byte tensors, and loading the
        model's and optimizer's states copies them to the parameters' device."""
        if not self.state_path.exists():
            return
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.best = float(state.get("best", self.best))
        # states saved before sessions were recorded start with one of unknown origin
        self.sessions = json.loads(state["sessions"]) if "sessions" in state else [{"from_step": 0, "to_step": self.step}]
        log(f"resumed from {self.state_path} at step {self.step} (session {len(self.sessions) + 1})")

    def begin_session(self) -> None:
        """Record this call as a session, from the current step (called before its first step)."""
        self.sessions.append(new_session(self.step, str(next(self.model.parameters()).device)))
        self._session_start = self.elapsed

    def sessions_now(self) -> list[dict[str, object]]:
        """The sessions, the current one brought up to the current step (for state and weights)."""
        if self._session_start is not None:  # this call took steps: its session is the last one
            self.sessions[-1].update(to_step=self.step, step_seconds=round(self.elapsed - self._session_start, 1))
        return self.sessions

    def save(self) -> None:
        sessions = json.dumps(self.sessions_now())
        save_state(self.state_path, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "step": self.step, "elapsed": self.elapsed, "best": self.best, "sessions": sessions,
        })
        with replacing(self.out_dir / SESSIONS_FILE) as tmp:
            tmp.write_text(json.dumps(self.sessions, indent=1) + "\n", encoding="utf-8")


def run_steps(
    run: TrainingRun, steps: int, checkpoint_every: int, take_step: Callable[[int], tuple[float, Sequence[object]]],
    loss_columns: Sequence[str], log: Callable[[str], None],
    validate: Callable[[], None] | None = None, validate_every: int = 0, max_seconds: float | None = None,
    lr: float | None = None, lr_schedule: str = "constant",
) -> bool:
    """Take steps until ``run.step == steps``, or until ``max_seconds`` of wall time have passed.

    ``take_step(step)`` makes one optimiser step and returns (loss, the values of
    ``loss_columns`` for the log). ``validate()`` runs after every ``validate_every`` steps
    (it updates ``run.best``); the state is saved every ``checkpoint_every`` steps and at the
    end, also when time runs out (a rerun resumes there). With ``lr``, each step's rate is
    ``learning_rate(lr_schedule, lr, step, steps)``. Returns whether all steps are done.
    """
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    if run.step < steps:
        run.begin_session()
    with open(run.out_dir / LOSS_FILE, "a", newline="") as loss_file:
        writer = csv.writer(loss_file)
        if loss_file.tell() == 0:
            writer.writerow(["step", "loss", "elapsed_s", *loss_columns])
        while run.step < steps:
            started = time.perf_counter()
            if lr is not None:
                for group in run.optimizer.param_groups:
                    group["lr"] = learning_rate(lr_schedule, lr, run.step, steps)
            loss, columns = take_step(run.step)
            run.step += 1
            run.elapsed += time.perf_counter() - started
            writer.writerow([run.step, f"{loss:.6f}", f"{run.elapsed:.1f}", *columns])
            loss_file.flush()
            if validate is not None and validate_every > 0 and run.step % validate_every == 0:
                validate()
            if run.step % checkpoint_every == 0 or run.step == steps:
                run.save()
                log(f"step {run.step}/{steps}  loss {loss:.5f}  {run.elapsed:.0f}s")
            if deadline is not None and time.monotonic() >= deadline and run.step < steps:
                run.save()
                log(f"stopped at step {run.step}/{steps}: the time limit is reached; rerun the same command to resume")
                return False
    return True
