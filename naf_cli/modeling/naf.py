"""NAF: Neighborhood Attention Filtering, a zero-shot feature upsampler."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from naf_cli.errors import ShapeError
from naf_cli.modeling.attention import DEFAULT_CHUNK_BYTES, cross_scale_neighborhood_attention
from naf_cli.modeling.guidance import ImageEncoder
from naf_cli.modeling.upsampler import Upsampler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NAF(Upsampler):
    """Upsample low-resolution features guided by the image.

    The image encoder makes queries at the output resolution; their average-pooled copies
    at the feature resolution are the keys; each output vector is the softmax-weighted mix
    of the ``kernel_size x kernel_size`` features around its low-resolution cell. The
    attention has no parameters, so one set of weights serves any backbone.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        dim: int = 256,
        num_heads: int = 4,
        kernel_size: int = 9,
        num_blocks: int = 2,
        context_kernel: int = 3,
        max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.max_chunk_bytes = max_chunk_bytes
        self.image_encoder = ImageEncoder(dim, num_blocks, context_kernel, num_heads)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def check_channels(self, channels: int) -> None:
        """Raise ShapeError unless ``channels`` splits evenly into the attention heads."""
        if channels % self.num_heads:
            raise ShapeError(
                f"NAF splits features into {self.num_heads} heads, but they have {channels} channels, "
                f"which is not divisible by {self.num_heads}; fix: pad or project the features to a multiple "
                f"of {self.num_heads}, or use another upsampler (--upsampler bilinear)"
            )

    def peak_bytes(self, channels: int, output_size: tuple[int, int], batch: int = 1) -> int:
        """Estimated peak of one float32 forward: the output, the query map's copies at the
        output size (encoder output, RoPE's rotations), plus the attention's chunk budget.

        3.5 copies of the query map: measured peaks at x32 (docs/benchmarks.md) and x72 (the speed issue)
        are 3.2 copies above the output.
        """
        pixels = batch * output_size[0] * output_size[1]
        dim = self.image_encoder.rope.dim
        return pixels * (channels + dim * 7 // 2) * 4 + self.max_chunk_bytes

    def queries_and_keys(self, image: torch.Tensor, low_size: tuple[int, int], output_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries [B, dim, H, W] and keys [B, dim, h, w] from an image in [0, 1]."""
        normalised = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        queries = self.image_encoder(normalised, output_size)
        keys = F.adaptive_avg_pool2d(queries, low_size)
        return queries, keys

    def forward(self, image: torch.Tensor, features: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """Upsample features.

        Args:
            image: [B, 3, H_img, W_img], RGB in [0, 1] (NAF normalises it itself).
            features: [B, C, h, w], C divisible by ``num_heads``.
            output_size: (H, W), any size.

        Returns:
            [B, C, H, W].
        """
        self.check_inputs(image, features)
        output_size = (int(output_size[0]), int(output_size[1]))
        queries, keys = self.queries_and_keys(image, (int(features.shape[-2]), int(features.shape[-1])), output_size)
        return cross_scale_neighborhood_attention(
            queries, keys, features, self.num_heads, self.kernel_size, self.max_chunk_bytes
        )
