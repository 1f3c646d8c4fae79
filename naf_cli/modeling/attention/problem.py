"""What an attention backend is asked to compute, so backends can say whether they can."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionProblem:
    """Sizes and context of one cross-scale attention call."""

    batch: int
    qk_dim: int
    value_dim: int
    out_size: tuple[int, int]
    low_size: tuple[int, int]
    num_heads: int
    kernel_size: int
    device_type: str
    element_size: int
    needs_grad: bool

    @classmethod
    def of(
        cls, query: torch.Tensor, value: torch.Tensor, out_size: tuple[int, int], low_size: tuple[int, int],
        num_heads: int, kernel_size: int, needs_grad: bool = False,
    ) -> AttentionProblem:
        """The problem of attending from ``query`` [B, D, ., W] to ``value`` [B, C, h, w]."""
        return cls(
            batch=int(query.shape[0]), qk_dim=int(query.shape[1]), value_dim=int(value.shape[1]),
            out_size=(int(out_size[0]), int(out_size[1])), low_size=(int(low_size[0]), int(low_size[1])),
            num_heads=num_heads, kernel_size=kernel_size, device_type=query.device.type,
            element_size=query.element_size(), needs_grad=needs_grad,
        )

    @property
    def integer_ratio(self) -> tuple[int, int] | None:
        """(H / h, W / w) when both divide exactly, else None."""
        (big_h, big_w), (h, w) = self.out_size, self.low_size
        if big_h % h or big_w % w:
            return None
        return big_h // h, big_w // w
