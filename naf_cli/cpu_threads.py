"""How many CPU threads the compute uses: the CPUs this process may run on, less those that
other processes keep busy at the moment.

On a shared machine (a SLURM node, a laptop with a browser) a forward made of many short
parallel regions collapses when its threads outnumber the free CPUs: each region ends at a
barrier where the threads that did run spin, waiting for one that was descheduled
(measured on 2 cores beside 2 busy processes: NAF 4.3x slower than idle, the plain
convolutions 2x). Fitting the thread count to the free CPUs, again every few bands, avoids
the wait; on an idle machine it changes nothing.
"""

from __future__ import annotations

import functools
import math
import os
import time
from pathlib import Path
from types import TracebackType

import torch

REFIT_SECONDS = 0.1  # at most one look at the machine per this many seconds


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, quota)) if quota is not None else max(1, cpus)


def _cgroup_quota() -> int | None:
    """``cpu.max`` of this process's cgroup (v2), rounded up to whole CPUs; None if unlimited or unknown."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()[0]
        group = line.split("::", 1)[1] if line.startswith("0::") else None
        if group is None:
            return None
        quota, period = Path("/sys/fs/cgroup", group.lstrip("/"), "cpu.max").read_text().split()[:2]
    except (OSError, IndexError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def busy_elsewhere() -> int | None:
    """Threads of other processes running or ready to run right now (Linux); None if unknown.

    ``/proc/loadavg`` counts every runnable thread of the machine (of the host, in most
    containers: the neighbours that matter); this process's own running threads are taken off.
    """
    try:
        runnable = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        own = 0
        for task in os.scandir("/proc/self/task"):
            try:
                stat = Path(task.path, "stat").read_text()
            except OSError:
                continue  # the thread ended meanwhile
            if stat[stat.rindex(")") + 2] == "R":
                own += 1
    except (OSError, ValueError, IndexError):
        return None
    return max(0, runnable - own)


class LoadFittedThreads:
    """Around each step of a computation, ``with fit:`` sets torch's CPU threads to the free
    CPUs, and ``fit.refit()`` inside it looks again. The count never exceeds what was set
    when the step began (a user's ``torch.set_num_threads`` is the ceiling) and is restored
    when it ends, so code between the steps runs with its own setting.
    """

    def __init__(self, refit_seconds: float = REFIT_SECONDS) -> None:
        self.refit_seconds = refit_seconds
        self.cpus = usable_cpus()
        self.ceiling = 0
        self.checked = -math.inf
        self.threads = 0  # the count in effect (0: none chosen yet, the ceiling)
        self.wanted = 0  # the count the previous look asked for

    def __enter__(self) -> LoadFittedThreads:
        self.ceiling = torch.get_num_threads()
        self.refit()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if torch.get_num_threads() != self.ceiling:
            torch.set_num_threads(self.ceiling)

    def threads_for(self, others: int | None) -> int:
        """Threads to use when ``others`` threads of other processes want a CPU."""
        if others is None:
            return self.ceiling
        return max(1, min(self.ceiling, self.cpus - others))

    def refit(self) -> int:
        """Look at the machine (at most every ``refit_seconds``) and set the thread count; returns it.

        A new count takes effect when two looks in a row agree on it: a daemon's blip costs no
        thread, and a busy neighbour seen idle for an instant gets none back."""
        now = time.monotonic()
        if self.ceiling > 1 and now - self.checked >= self.refit_seconds:
            self.checked = now
            wanted = self.threads_for(busy_elsewhere())
            if wanted == self.wanted:
                self.threads = wanted
            self.wanted = wanted
        threads = min(self.threads or self.ceiling, self.ceiling)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads


@functools.cache
def process_fit() -> LoadFittedThreads:
    """The process's one ``LoadFittedThreads``: what it saw carries from one forward to the next."""
    return LoadFittedThreads()
