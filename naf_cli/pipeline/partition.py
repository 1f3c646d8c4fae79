"""Which inputs one process of a split run takes (``--shard I/N``, or torchrun's RANK of WORLD_SIZE).

The unit of work is a *batch group*: the inputs in name order, cut into fixed groups of
``--batch-size``. Group ``g`` belongs to part ``g mod N``. Groups never depend on the split
or on what is already done, so every image is computed in the same batch, with the same
bits, whether one process or N do the work, and whatever N a resumed run uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from naf_cli.errors import OptionError

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Partition:
    """Part ``index`` of ``count`` (0-based): ``Partition()`` is the whole run."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise OptionError(f"part {self.index}/{self.count} does not exist; fix: use I/N with 0 <= I < N (e.g. --shard 0/4)")

    @classmethod
    def parse(cls, text: str) -> Partition:
        """``"2/8"`` -> part 2 of 8 (``--shard``; parts count from 0, as SLURM array ids usually do)."""
        match = _SPEC.match(text)
        if match is None:
            raise OptionError(f"--shard {text!r} is not I/N; fix: e.g. --shard 0/4 ... --shard 3/4 (parts count from 0)")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def label(self) -> str:
        """``2/8``, as users write it."""
        return f"{self.index}/{self.count}"

    @property
    def tag(self) -> str:
        """``2of8``, for file names."""
        return f"{self.index}of{self.count}"

    @property
    def is_whole(self) -> bool:
        return self.count == 1

    def group_starts(self, inputs: int, batch_size: int) -> range:
        """Start positions (in the name order) of this part's batch groups."""
        step = batch_size * self.count
        return range(self.index * batch_size, inputs, step)
