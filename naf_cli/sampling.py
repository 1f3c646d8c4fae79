"""Seeded choices: the same subset of a list for the same seed, on every machine."""

from __future__ import annotations

import random
from collections.abc import Sequence


def seeded_choice(names: Sequence[str], count: int, seed: int) -> list[str]:
    """Up to ``count`` of ``names``, the same ones for the same seed, in their original order."""
    if len(names) <= count:
        return list(names)
    chosen = set(random.Random(seed).sample(range(len(names)), count))
    return [name for i, name in enumerate(names) if i in chosen]
