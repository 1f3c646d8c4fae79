"""NAF: Neighborhood Attention Filtering, a zero-shot feature upsampler."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from naf_cli.allocator import release_freed_memory
from naf_cli.cpu_threads import process_fit
from naf_cli.errors import ShapeError
from naf_cli.modeling.attention import (
    DEFAULT_CHUNK_BYTES,
    AttentionBackend,
    AttentionProblem,
    choose_backend,
    cross_scale_neighborhood_attention,
    get_backend,
)
from naf_cli.modeling.encoder_bands import CPU_BAND_ROWS, encode_in_bands
from naf_cli.modeling.encoder_convolution import check_convolution, resolve_convolution
from naf_cli.modeling.fused_kernels import KernelChoice
from naf_cli.modeling.guidance import ImageEncoder
from naf_cli.modeling.queries import QueryRows, pool_columns
from naf_cli.modeling.upsampler import Upsampler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# work per band of output rows (queries, their grouped copy, results): small enough to stay in cache
BAND_BYTES = 48 * 2**20


class NAF(Upsampler):
    """Upsample low-resolution features guided by the image.

    The image encoder makes queries at the output resolution; their average-pooled copies
    at the feature resolution are the keys; each output vector is the softmax-weighted mix
    of the ``kernel_size x kernel_size`` features around its low-resolution cell. The
    attention has no parameters, so one set of weights serves any backbone.

    ``attention_backend``, ``encoder_convolution`` (``"winograd"`` or ``"direct"``) and
    ``fused_kernels`` (``"compiled"`` or ``"eager"``) pick how inference runs; None chooses per
    device (``modeling.attention``, ``modeling.encoder_convolution``, ``modeling.fused_kernels``:
    compiled once a run has lasted long enough to repay the compile).
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
        attention_backend: str | None = None,
        encoder_convolution: str | None = None,
        fused_kernels: str | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.num_blocks, self.context_kernel = dim, num_blocks, context_kernel
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.max_chunk_bytes = max_chunk_bytes
        if attention_backend is not None:
            get_backend(attention_backend)  # unknown names fail here, not at the first forward
        self.attention_backend = attention_backend
        check_convolution(encoder_convolution)  # as for the backend: unknown names fail here
        self.encoder_convolution = encoder_convolution
        self.kernel_choice = KernelChoice(fused_kernels)  # unknown names fail here too
        self.image_encoder = ImageEncoder(dim, num_blocks, context_kernel, num_heads)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def fused_kernels(self) -> str | None:
        """The fused kernels asked for (None: chosen per forward, ``modeling.fused_kernels``)."""
        return self.kernel_choice.name

    @fused_kernels.setter
    def fused_kernels(self, name: str | None) -> None:
        self.kernel_choice = KernelChoice(name)  # the time counted towards the automatic compile starts again

    def architecture(self) -> dict[str, int]:
        """The constructor parameters that shape the weights (saved with every checkpoint)."""
        return {"dim": self.dim, "num_heads": self.num_heads, "kernel_size": self.kernel_size,
                "num_blocks": self.num_blocks, "context_kernel": self.context_kernel}

    def check_channels(self, channels: int) -> None:
        """Raise ShapeError unless ``channels`` splits evenly into the attention heads."""
        if channels % self.num_heads:
            raise ShapeError(
                f"NAF splits features into {self.num_heads} heads, but they have {channels} channels, "
                f"which is not divisible by {self.num_heads}; fix: pad or project the features to a multiple "
                f"of {self.num_heads}, or use another upsampler (--upsampler bilinear)"
            )

    def peak_bytes(
        self, channels: int, output_size: tuple[int, int], batch: int = 1, guidance_size: tuple[int, int] | None = None,
    ) -> int:
        """Estimated peak of one float32 inference forward: the output, the encoder's maps at
        the guidance size (the output size when not given: the largest the pipeline uses),
        the query map kept between the two passes when it fits the chunk budget, and the
        attention's chunk budget."""
        out_pixels = batch * output_size[0] * output_size[1]
        guide = guidance_size if guidance_size is not None else output_size
        guide_pixels = batch * guide[0] * guide[1]
        dim = self.image_encoder.rope.dim
        encoder = guide_pixels * 2 * dim * 4
        queries = min(out_pixels * dim * 4, self.max_chunk_bytes)
        return out_pixels * channels * 4 + encoder + queries + self.max_chunk_bytes

    def banded_peak_bytes(
        self, channels: int, output_size: tuple[int, int], batch: int = 1, guidance_size: tuple[int, int] | None = None,
    ) -> int:
        """``peak_bytes`` without the output (each band is handed on), with one band's rows."""
        band = self.band_plan(torch.empty(batch, channels, 1, 1, device="meta"), output_size)[0]
        rows = band[1] - band[0]
        band_bytes = batch * rows * output_size[1] * channels * 4
        out_bytes = batch * output_size[0] * output_size[1] * channels * 4
        return self.peak_bytes(channels, output_size, batch, guidance_size) - out_bytes + band_bytes + BAND_BYTES

    def problem(self, features: torch.Tensor, output_size: tuple[int, int], needs_grad: bool = False) -> AttentionProblem:
        """The attention problem of upsampling ``features`` to ``output_size``."""
        queries = features.new_empty(features.shape[0], self.image_encoder.rope.dim, 0, 0)
        low = (int(features.shape[-2]), int(features.shape[-1]))
        return AttentionProblem.of(queries, features, output_size, low, self.num_heads, self.kernel_size, needs_grad)

    def backend(self, features: torch.Tensor, output_size: tuple[int, int], needs_grad: bool = False) -> AttentionBackend:
        """The attention backend this forward uses (``attention_backend``, or the chosen one)."""
        return choose_backend(self.problem(features, output_size, needs_grad), self.attention_backend)

    def _normalise(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)

    def queries_and_keys(self, image: torch.Tensor, low_size: tuple[int, int], output_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries [B, dim, H, W] and keys [B, dim, h, w] from an image in [0, 1] (the module path, with autograd)."""
        queries = self.image_encoder(self._normalise(image), output_size)
        keys = F.adaptive_avg_pool2d(queries, low_size)
        return queries, keys

    def band_plan(self, features: torch.Tensor, output_size: tuple[int, int], band_rows: int | None = None) -> list[tuple[int, int]]:
        """Output row ranges ``[r0, r1)`` computed one at a time.

        Default: whole rows of cells, as many as fit ``BAND_BYTES`` of per-row work
        (queries, their grouped copy, the result), at least one output row.
        """
        height, width = output_size
        if band_rows is None:
            batch, channels, low_h = features.shape[0], features.shape[1], features.shape[-2]
            per_row = batch * width * (2 * self.image_encoder.rope.dim + 3 * channels) * 4
            band_rows = max(1, BAND_BYTES // per_row)
            cell = -(-height // low_h)
            if band_rows >= cell:
                band_rows -= band_rows % cell
        return [(r0, min(height, r0 + band_rows)) for r0 in range(0, height, band_rows)]

    def forward_bands(
        self, image: torch.Tensor, features: torch.Tensor, output_size: tuple[int, int], band_rows: int | None = None,
        out: torch.Tensor | None = None,
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """The output in horizontal bands: yields ``(r0, r1, rows)`` with rows [B, C, r1 - r0, W].

        The encoder runs once on the guidance image (its GroupNorm statistics are those of
        the whole image); queries are made band by band, after one pass that pools them
        into the keys. The query map is kept between the passes only when it fits the
        chunk budget, so memory beyond the encoder is bounded by the band, at any ratio.
        Bands equal the rows of ``forward`` to float rounding. Inference only. With ``out``
        ([B, C, H, W]) given, banded backends write each band into its rows, and the
        yielded rows are views of it.
        """
        self.check_inputs(image, features)
        height, width = int(output_size[0]), int(output_size[1])
        low = (int(features.shape[-2]), int(features.shape[-1]))
        backend = self.backend(features, (height, width))
        plan = self.band_plan(features, (height, width), band_rows) if backend.banded else [(0, height)]
        keep = features.shape[0] * height * width * self.image_encoder.rope.dim * 4 <= self.max_chunk_bytes
        kept: dict[int, torch.Tensor] = {}
        cache: dict[str, object] = {}  # the backend's work shared between bands of this output
        convolution = resolve_convolution(self.encoder_convolution, image.device, image.dtype)
        kernels = self.kernel_choice.resolve(image.device, image.dtype)
        # on a CPU the threads follow the free CPUs, step by step (restored around each yield)
        fit = process_fit() if image.device.type == "cpu" else None
        # no_grad around each step, never around a yield (that would leak into the caller)
        started = time.perf_counter()
        with torch.no_grad(), fit if fit is not None else contextlib.nullcontext():
            guide = self.image_encoder.prepare(self._normalise(image), (height, width))
            encoder_rows = CPU_BAND_ROWS if guide.device.type == "cpu" else int(guide.shape[-2])
            refit = fit.refit if fit is not None else None
            encoded = encode_in_bands(self.image_encoder, guide, encoder_rows, refit, convolution, kernels)
            rows = QueryRows(encoded, (height, width), self.image_encoder.rope, kernels)
            same_size = low == (height, width)
            if same_size:
                # output size = key size (the restoration variant): pooling is the identity, so the
                # keys are the query map itself; once it is whole the encoder's output is freed and
                # each band reads its queries from it
                keys = torch.empty(features.shape[0], self.image_encoder.rope.dim, height, width, dtype=guide.dtype,
                                   device=guide.device, memory_format=torch.channels_last)
                for r0, r1 in plan:
                    keys[:, :, r0:r1] = rows(r0, r1)
                rows.encoded = rows.encoded[:, :, :0]  # the encoder's output is not needed again
            else:
                column_pooled = []
                for r0, r1 in plan:
                    queries = rows(r0, r1)
                    column_pooled.append(pool_columns(queries, low[1]))
                    if keep:
                        kept[r0] = queries
                keys = F.adaptive_avg_pool2d(torch.cat(column_pooled, dim=2), low)
                del column_pooled
        if guide.device.type == "cpu":
            release_freed_memory()  # the encoder's bands are gone: their pages must not add to the bands' peak
        tracing = torch.compiler.is_compiling()  # a traced forward keeps no bookkeeping
        if not tracing:
            self.kernel_choice.spent(time.perf_counter() - started)
        for r0, r1 in plan:
            started = time.perf_counter()
            with torch.no_grad(), fit if fit is not None else contextlib.nullcontext():
                queries = keys[:, :, r0:r1] if same_size else (kept.pop(r0) if keep else rows(r0, r1))
                band = backend.attend(
                    queries, keys, features, row0=r0, out_height=height, num_heads=self.num_heads,
                    kernel_size=self.kernel_size, max_chunk_bytes=self.max_chunk_bytes,
                    out=None if out is None else out[:, :, r0:r1], cache=cache,
                )
            if not tracing:
                self.kernel_choice.spent(time.perf_counter() - started)  # the time the caller takes is not NAF's
            yield r0, r1, band

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
        needs_grad = torch.is_grad_enabled() and (
            image.requires_grad or features.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        if needs_grad:
            queries, keys = self.queries_and_keys(image, (int(features.shape[-2]), int(features.shape[-1])), output_size)
            return cross_scale_neighborhood_attention(
                queries, keys, features, self.num_heads, self.kernel_size, self.max_chunk_bytes, self.attention_backend
            )
        out = features.new_empty(features.shape[0], features.shape[1], output_size[0], output_size[1])
        for r0, r1, rows in self.forward_bands(image, features, output_size, out=out):
            if rows.data_ptr() != out[:, :, r0:r1].data_ptr():
                out[:, :, r0:r1] = rows  # a backend that does not write in place
        return out
