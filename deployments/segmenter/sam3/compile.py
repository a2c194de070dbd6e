"""The SAM 3 image encoder under torch.compile, padded to a few batch sizes and compiled before the replica serves.

@serve.batch hands the encoder any batch size from 1 to `max_batch_size`. A graph compiled for fixed
shapes is fastest, so batches are padded (with zero images) up to the next of a few bucket sizes: 1, 2, 4,
... and `max_batch_size` itself; each bucket is compiled once, during warm-up in the replica's constructor,
so no request pays for compilation. The padded rows are dropped from the output.

`scope` says what is compiled: "vit" the ViT alone (the tracker's neck runs eagerly after it), "encoder"
the ViT and the tracker's neck as one graph (px → the four tensors an ImageEmbedding holds).

No CUDA-graph modes: inductor records its graphs per thread, and the encoder is called from a pool of
worker threads (docs/sam3.md: a recording broken by another thread's kernels on the H200, an
AssertionError with the calls moved to one thread of their own on the H100).
"""
from __future__ import annotations

import logging
import time

from .encoder import encode_core

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


class CompiledEncoder:
    """Callable px (B x 3 x S x S) → (spatial B x C x g x g, high_res_feats_0, high_res_feats_1,
    image_embed), compiled per bucket."""

    def __init__(self, models, buckets: tuple[int, ...], mode: str = "default", backend: str = "inductor",
                 scope: str = "vit"):
        """models: the loaded Sam3Models; encoder.encode_core is what runs."""
        import torch
        import torch._dynamo

        self.buckets, self.mode, self.scope = buckets, mode, scope
        self.warmup_s: float | None = None
        kwargs = {"backend": backend, "dynamic": False}
        if backend == "inductor":
            kwargs["mode"] = mode
        if scope == "encoder":
            self._fn = torch.compile(lambda px: encode_core(models, px), **kwargs)
        else:
            vit = torch.compile(models.detector.vision_encoder.backbone, **kwargs)
            self._fn = lambda px: encode_core(models, px, vit)
        # One graph per bucket: make sure dynamo keeps them all rather than falling back to eager.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(buckets))

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
        return tuple(t[:n] for t in self._fn(px))

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
        log.info("SAM 3 %s compiled (%s) for batch sizes %s in %.1f s", self.scope, self.mode, self.buckets,
                 self.warmup_s)
        return self.warmup_s


def compiled_encoder(models, settings, max_batch_size: int) -> CompiledEncoder | None:
    """settings: Sam3Settings. The encoder compiled and warmed up for batches up to max_batch_size, or
    None when compilation is off."""
    if not compile_wanted(settings.compile, models.device):
        return None
    compiled = CompiledEncoder(
        models,
        batch_buckets(max_batch_size),
        mode=settings.compile_mode,
        backend=settings.compile_backend,
        scope=settings.compile_scope,
    )
    compiled.warm_up(models.pixels.size, models.device, models.dtype)
    return compiled
