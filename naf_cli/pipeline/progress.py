"""How a run reports progress. The library uses tqdm (it renders in notebooks); the CLI
passes its own reporters (``naf_cli/cli/progress.py``)."""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Progress(Protocol):
    """Receives a run's events. ``warn`` gets one whole line, never to be wrapped or cut."""

    def start(self, total: int, description: str) -> None: ...

    def advance(self, name: str) -> None: ...

    def warn(self, line: str) -> None: ...

    def close(self) -> None: ...


class TqdmProgress:
    """A tqdm bar on stderr (``tqdm.auto``: a widget in Jupyter)."""

    def __init__(self) -> None:
        self.bar: Any = None

    def start(self, total: int, description: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=description, unit="img", file=sys.stderr, dynamic_ncols=True)

    def advance(self, name: str) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def warn(self, line: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class SilentProgress:
    """Reports nothing; warnings still reach stderr."""

    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, name: str) -> None:
        pass

    def warn(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass
