"""The SAM 3 image encoder under torch.compile, padded to a few batch sizes and compiled before the replica serves.

@serve.batch hands the encoder any batch size from 1 to `max_batch_size`. A graph compiled for fixed
shapes is fastest, so batches are padded (with zero images) up to the next of a few bucket sizes: 1, 2, 4,
... and `max_batch_size` itself; each bucket is compiled once, during warm-up in the replica's constructor,
so no request pays for compilation. The padded rows are dropped from the output.

`scope` says what is compiled: "vit" the ViT alone (the tracker's neck runs eagerly after it), "encoder"
the ViT and the tracker's neck as one graph (px → the four tensors an ImageEmbedding holds).

Every call runs on the compiled encoder's own thread. With `mode="reduce-overhead"` inductor records CUDA
graphs, and it keeps them per thread: a graph is recorded during the warm-up on that thread and replayed
there for every request, whichever worker thread the request came from. Recording must not overlap with
kernels other threads launch on the legacy default stream (the capture is invalidated), so the backend
holds `exclusive` around its other GPU work whenever graphs are recorded after the constructor.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

log = logging.getLogger(__name__)

CUDA_GRAPH_MODES = ("reduce-overhead",)
WARM_UP_CALLS = {"reduce-overhead": 3}  # cudagraph trees: a warm-up run, a recording, then replays


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
    image_embed), compiled per bucket, run on its own thread."""

    def __init__(self, encode: Callable, backbone, buckets: tuple[int, ...], mode: str = "default",
                 backend: str = "inductor", scope: str = "vit"):
        """encode(px, vit) → the four tensors, running `vit` (a callable like the backbone) for the ViT."""
        import torch
        import torch._dynamo

        self.buckets, self.mode, self.scope = buckets, mode, scope
        self.warmup_s: float | None = None
        self.cuda_graphs = backend == "inductor" and mode in CUDA_GRAPH_MODES
        # Held while CUDA graphs are recorded after the constructor; the backend's other GPU work takes it.
        self.exclusive = threading.RLock() if self.cuda_graphs else contextlib.nullcontext()
        kwargs = {"backend": backend, "dynamic": False}
        if backend == "inductor":
            kwargs["mode"] = mode
        if scope == "encoder":
            self._fn = torch.compile(lambda px: encode(px, backbone), **kwargs)
        else:
            vit = torch.compile(backbone, **kwargs)
            self._fn = lambda px: encode(px, vit)
        # One graph per bucket: make sure dynamo keeps them all rather than falling back to eager.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(buckets))
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam3-encoder")

    def set_buckets(self, buckets: tuple[int, ...], size: int, device, dtype) -> None:
        """Serve batches up to a new size: compiles (warms up) the buckets not compiled yet."""
        import torch._dynamo

        new = tuple(b for b in buckets if b not in self.buckets)
        self.buckets = buckets
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(buckets))
        if new:
            with self.exclusive:
                self.warm_up(size, device, dtype, new)

    def bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        return n  # larger than any bucket (a direct caller): compiled for that shape on first use

    def __call__(self, px):
        return self._thread.submit(self._run, px).result()

    def _run(self, px):
        import torch

        with torch.inference_mode():  # thread-local: this thread's own (and padding made outside it recompiles)
            px = px.contiguous()  # the layout compiled for; another layout would recompile
            n = px.shape[0]
            b = self.bucket(n)
            if b != n:
                px = torch.cat([px, px.new_zeros((b - n, *px.shape[1:]))])
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
                # A replay overwrites the graph's outputs: each result gets its own memory now.
                return tuple(t[:n].clone() for t in self._fn(px))
            return tuple(t[:n] for t in self._fn(px))

    def warm_up(self, size: int, device, dtype, buckets: tuple[int, ...] | None = None) -> float:
        """Compile every bucket (or those given) now, on zero images; → seconds spent."""
        import torch

        t = time.perf_counter()
        with torch.inference_mode():
            for b in buckets or self.buckets:
                for _ in range(WARM_UP_CALLS.get(self.mode, 1) if self.cuda_graphs else 1):
                    self(torch.zeros((b, 3, size, size), device=device, dtype=dtype))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.warmup_s = time.perf_counter() - t
        log.info("SAM 3 %s compiled (%s) for batch sizes %s in %.1f s", self.scope, self.mode, self.buckets,
                 self.warmup_s)
        return self.warmup_s


def compiled_encoder(models, settings, max_batch_size: int, encode: Callable) -> CompiledEncoder | None:
    """settings: Sam3Settings. The encoder compiled and warmed up for batches up to max_batch_size, or
    None when compilation is off."""
    if not compile_wanted(settings.compile, models.device):
        return None
    compiled = CompiledEncoder(
        encode,
        models.detector.vision_encoder.backbone,
        batch_buckets(max_batch_size),
        mode=settings.compile_mode,
        backend=settings.compile_backend,
        scope=settings.compile_scope,
    )
    compiled.warm_up(models.pixels.size, models.device, models.dtype)
    return compiled
