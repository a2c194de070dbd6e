"""The SAM 3 ViT under torch.compile, padded to a few batch sizes and compiled before the replica serves.

@serve.batch hands the encoder any batch size from 1 to `max_batch_size`. A graph compiled for fixed
shapes is fastest, so batches are padded (with zero images) up to the next of a few bucket sizes: 1, 2, 4,
... and `max_batch_size` itself; each bucket is compiled once, during warm-up in the replica's constructor,
so no request pays for compilation. The padded rows are dropped from the output.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger(__name__)


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... below max_batch_size, and max_batch_size: the shapes compiled."""
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    return tuple(sizes + [max_batch_size])


def compile_wanted(setting: str, device) -> bool:
    """`compile` setting → whether to compile: "auto" means on CUDA only (CPU compilation costs more than
    it saves on a tiny model, and CI stays fast)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


class CompiledVit:
    """Callable px (B x 3 x S x S) → last_hidden_state (B x g*g x C), with the ViT compiled per bucket."""

    def __init__(self, backbone, buckets: tuple[int, ...], mode: str = "default", backend: str = "inductor"):
        import torch

        self.buckets = buckets
        self.warmup_s: float | None = None
        kwargs = {"backend": backend, "dynamic": False}
        if backend == "inductor":
            kwargs["mode"] = mode
        self._fn = torch.compile(backbone, **kwargs)
        # One graph per bucket: make sure dynamo keeps them all rather than falling back to eager.
        import torch._dynamo

        limit = torch._dynamo.config.cache_size_limit
        torch._dynamo.config.cache_size_limit = max(limit, 2 * len(buckets))

    def set_buckets(self, buckets: tuple[int, ...], size: int, device, dtype) -> None:
        """Serve batches up to a new size: compiles (warms up) the buckets not compiled yet."""
        import torch._dynamo

        new = tuple(b for b in buckets if b not in self.buckets)
        self.buckets = buckets
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(buckets))
        if new:
            self.warm_up(size, device, dtype, new)

    def bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        return n  # larger than any bucket (a direct caller): compiled for that shape on first use

    def __call__(self, px):
        import torch

        px = px.contiguous()  # the layout compiled for; another layout would recompile
        n = px.shape[0]
        b = self.bucket(n)
        if b != n:
            px = torch.cat([px, px.new_zeros((b - n, *px.shape[1:]))])
        return self._fn(px).last_hidden_state[:n]

    def warm_up(self, size: int, device, dtype, buckets: tuple[int, ...] | None = None) -> float:
        """Compile every bucket (or those given) now, on zero images; → seconds spent."""
        import torch

        t = time.perf_counter()
        with torch.inference_mode():
            for b in buckets or self.buckets:
                self(torch.zeros((b, 3, size, size), device=device, dtype=dtype))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.warmup_s = time.perf_counter() - t
        log.info("SAM 3 ViT compiled for batch sizes %s in %.1f s", self.buckets, self.warmup_s)
        return self.warmup_s


def compiled_vit(models, settings, max_batch_size: int) -> Callable | None:
    """settings: Sam3Settings. The ViT compiled and warmed up for batches up to max_batch_size, or None
    when compilation is off."""
    if not compile_wanted(settings.compile, models.device):
        return None
    vit = CompiledVit(
        models.detector.vision_encoder.backbone,
        batch_buckets(max_batch_size),
        mode=settings.compile_mode,
        backend=settings.compile_backend,
    )
    vit.warm_up(models.pixels.size, models.device, models.dtype)
    return vit
