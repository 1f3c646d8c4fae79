"""How a run reports progress (the ``Progress`` seam of ``naf_cli.pipeline.seams``). The library uses tqdm (it renders in notebooks); the CLI
passes its own reporters (``naf_cli/cli/progress.py``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from naf_cli.pipeline.seams import Progress


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


class PartProgress:
    """Another reporter, with the part of a split run before each warning (parts share logs)."""

    def __init__(self, inner: Progress, label: str) -> None:
        self.inner = inner
        self.label = label

    def start(self, total: int, description: str) -> None:
        self.inner.start(total, f"{self.label}: {description}")

    def advance(self, name: str) -> None:
        self.inner.advance(name)

    def warn(self, line: str) -> None:
        self.inner.warn(f"{self.label}: {line}")

    def close(self) -> None:
        self.inner.close()
