"""One seam over every attention backend: each says why it cannot run a problem, and the
first willing one in order of preference is chosen."""

from __future__ import annotations

from typing import Protocol

import torch

from naf_cli.errors import OptionError, UnknownNameError
from naf_cli.modeling.attention.blocks import BlocksBackend
from naf_cli.modeling.attention.cells import CellsBackend
from naf_cli.modeling.attention.natten_route import NattenBackend
from naf_cli.modeling.attention.problem import AttentionProblem
from naf_cli.modeling.attention.reference import ReferenceBackend


class AttentionBackend(Protocol):
    """Computes rows of the cross-scale neighborhood attention."""

    name: str
    banded: bool        # can compute any band of output rows on its own
    description: str

    def refusal(self, problem: AttentionProblem) -> str | None:
        """Why this backend cannot run ``problem``, or None when it can."""

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
        row0: int, out_height: int, num_heads: int, kernel_size: int, max_chunk_bytes: int,
        out: torch.Tensor | None = None, cache: dict[str, object] | None = None,
    ) -> torch.Tensor:
        """query [B, D, r, W] (output rows ``[row0, row0 + r)``), key [B, D, h, w], value [B, C, h, w] -> [B, C, r, W],
        written into ``out`` when given. ``cache``: a dict the caller keeps across the bands of
        one output (and only those), where a backend may keep work shared between bands."""


# Order of preference. A fused GPU kernel would go first, with a refusal off CUDA; ``blocks``
# takes only same-size problems (the restoration variant), where it beats the others.
BACKENDS: dict[str, AttentionBackend] = {
    backend.name: backend for backend in (BlocksBackend(), CellsBackend(), NattenBackend(), ReferenceBackend())
}


class BackendError(OptionError):
    """The requested attention backend cannot run this problem."""


def get_backend(name: str) -> AttentionBackend:
    """The backend called ``name``; unknown names fail with the list of known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise UnknownNameError(f"unknown attention backend '{name}'; known backends: {', '.join(BACKENDS)}") from None


def refusals(problem: AttentionProblem) -> dict[str, str | None]:
    """Every backend's answer for ``problem``: None where it can run, else why not."""
    return {name: backend.refusal(problem) for name, backend in BACKENDS.items()}


def choose_backend(problem: AttentionProblem, name: str | None = None) -> AttentionBackend:
    """The backend ``name`` (which must be able to run ``problem``), or the first one that can."""
    if name is not None:
        backend = get_backend(name)
        reason = backend.refusal(problem)
        if reason is not None:
            raise BackendError(f"attention backend '{name}' cannot run here: {reason}; fix: leave --backend out to choose automatically")
        return backend
    for backend in BACKENDS.values():
        if backend.refusal(problem) is None:
            return backend
    raise BackendError(f"no attention backend can run {problem}")  # 'cells' runs everything; kept for new backends
