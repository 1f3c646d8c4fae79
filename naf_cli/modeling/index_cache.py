"""A cache for the index tensors the attention and pooling build once per size."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")


def index_cache(maxsize: int) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """``functools.lru_cache`` whose entries are built outside inference mode: a tensor first
    made during an inference pass (validation, say) would otherwise be an inference tensor,
    which a later training step with the same sizes cannot save for its backward pass."""

    def decorate(build: Callable[P, R]) -> Callable[P, R]:
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(build)
        def cached(*args: P.args, **kwargs: P.kwargs) -> R:
            with torch.inference_mode(False):
                return build(*args, **kwargs)

        return cached  # type: ignore[return-value]

    return decorate
