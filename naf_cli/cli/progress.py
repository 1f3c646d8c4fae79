"""Progress for the CLI, on stderr: a Rich bar on a terminal, plain lines in a log file.

Lines are never wrapped or cut (file names stay whole), and the plain reporter flushes
each line as it happens.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RichProgress:
    """A live Rich bar; warnings printed above it as whole lines."""

    def __init__(self, console: Console) -> None:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        self.progress = Progress(*columns, console=console, transient=False)
        self.task = self.progress.add_task("", total=None)

    def start(self, total: int, description: str) -> None:
        # a run may have a stage before its main one (fitting --pca's basis): each starts from 0
        self.progress.reset(self.task, total=total, description=description)
        self.progress.start()

    def advance(self, name: str) -> None:
        self.progress.advance(self.task)

    def warn(self, line: str) -> None:
        self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        self.progress.stop()


class PlainProgress:
    """One line per 1% of the inputs or per ``interval`` seconds, whichever comes first."""

    def __init__(self, stream: TextIO, interval: float = 10.0) -> None:
        self.stream = stream
        self.interval = interval
        self.total = self.count = 0
        self.started = self.last = 0.0
        self.description = ""

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, total: int, description: str) -> None:
        self.total, self.description, self.count = total, description, 0
        self.started = self.last = time.monotonic()
        self._line(f"{description}: {total} input(s)")

    def advance(self, name: str) -> None:
        self.count += 1
        now = time.monotonic()
        step = max(1, self.total // 100)
        if self.count % step and now - self.last < self.interval and self.count != self.total:
            return
        self.last = now
        elapsed = now - self.started
        rate = self.count / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.count) / rate if rate > 0 else 0.0
        percent = 100 * self.count // max(self.total, 1)
        self._line(f"[{self.count}/{self.total}] {percent}% {rate:.2f} images/s, elapsed {elapsed:.0f}s, eta {eta:.0f}s: {name}")

    def warn(self, line: str) -> None:
        self._line(line)

    def close(self) -> None:
        pass


def stderr_console() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


# when stdout is piped or redirected, tables are this wide at most, so no hash, name or path is cut
PIPED_WIDTH = 1000


def stdout_console() -> Console:
    """Results on stdout: the terminal's width, or wide enough that nothing is cut or wrapped when piped."""
    return Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else PIPED_WIDTH)


def make_progress() -> RichProgress | PlainProgress:
    """Rich when stderr is a terminal, plain flushed lines otherwise."""
    if sys.stderr.isatty():
        return RichProgress(stderr_console())
    return PlainProgress(sys.stderr)
