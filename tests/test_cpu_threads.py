"""NAF's CPU threads follow the free CPUs: fewer beside busy neighbours, back to the user's
setting after each step, never more than it. Neighbours are real busy processes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import torch

from naf_cli.cpu_threads import REFIT_SECONDS, LoadFittedThreads, busy_elsewhere, usable_cpus
from naf_cli.modeling import NAF
from naf_cli.modeling.attention.cells import CellsBackend


@pytest.fixture
def ceiling() -> Iterator[int]:
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_threads_for_leaves_the_busy_cpus(ceiling: int) -> None:
    fit = LoadFittedThreads()
    fit.cpus, fit.ceiling = 8, 6
    assert [fit.threads_for(n) for n in (None, 0, 1, 2, 3, 7, 8, 20)] == [6, 6, 6, 6, 5, 1, 1, 1]


def test_a_new_count_needs_two_looks_in_a_row(ceiling: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy alone, fed a sequence of what the machine showed (2 CPUs, ceiling 2)."""
    import naf_cli.cpu_threads as cpu_threads

    looks = iter([0, 2, 0, 2, 2, 0, 2, 0, 0, None, None])
    monkeypatch.setattr(cpu_threads, "busy_elsewhere", lambda: next(looks))
    torch.set_num_threads(2)
    fit = LoadFittedThreads(refit_seconds=0)
    fit.cpus = 2
    with fit:
        chosen = [fit.threads or 2] + [fit.refit() for _ in range(10)]
    assert chosen == [2, 2, 2, 2, 1, 1, 1, 1, 2, 2, 2]
    assert torch.get_num_threads() == 2


@pytest.fixture
def neighbours() -> Iterator[int]:
    """As many busy processes as this process has CPUs (skips on a large machine)."""
    cpus = usable_cpus()
    if cpus < 2 or cpus > 8:
        pytest.skip(f"needs 2 to 8 usable CPUs, found {cpus}")
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cpus)]
    try:
        deadline = time.monotonic() + 10
        while (busy_elsewhere() or 0) < cpus and time.monotonic() < deadline:
            time.sleep(0.05)
        yield cpus
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_busy_elsewhere_counts_other_processes_not_ours(neighbours: int) -> None:
    assert busy_elsewhere() >= neighbours  # type: ignore[operator]


def _threads_seen_in_a_forward(model: NAF, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """torch's thread count inside the attention of each band, and after each band."""
    seen: list[int] = []
    attend = CellsBackend.attend

    def spy(self: CellsBackend, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return attend(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(CellsBackend, "attend", spy)
    with torch.no_grad():
        for _ in model.forward_bands(torch.rand(1, 3, 96, 96), torch.randn(1, 8, 6, 6), (96, 96), band_rows=16):
            time.sleep(REFIT_SECONDS * 1.2)  # a sink's work between bands: the next band looks again
    monkeypatch.undo()
    return seen


def test_a_forward_beside_busy_neighbours_uses_fewer_threads_and_restores_them(
    neighbours: int, ceiling: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.set_num_threads(neighbours)
    model = NAF(dim=32, num_heads=4, num_blocks=1).eval()
    seen = _threads_seen_in_a_forward(model, monkeypatch) + _threads_seen_in_a_forward(model, monkeypatch)
    assert min(seen) == 1, seen  # every CPU is taken by a neighbour: one thread
    # between the steps (in the caller's code) the caller's setting holds
    assert torch.get_num_threads() == neighbours


def test_the_users_setting_is_the_ceiling(ceiling: int, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    model = NAF(dim=32, num_heads=4, num_blocks=1).eval()
    assert set(_threads_seen_in_a_forward(model, monkeypatch)) == {1}
    assert torch.get_num_threads() == 1
