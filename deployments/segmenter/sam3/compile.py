"""The SAM 3 image encoder under torch.compile, padded to a few batch sizes and compiled before the replica serves.

@serve.batch hands the encoder any batch size from 1 to `max_batch_size`. A graph compiled for fixed
shapes is fastest, so batches are padded (with black images) up to the next of a few bucket sizes: 1, 2, 4,
... and `max_batch_size` itself; each bucket is compiled once, during warm-up in the replica's constructor,
so no request pays for compilation. The padded rows are dropped from the output. What the compiled
function takes is the uploaded uint8 pixels (B x S x S x 3, encoder.upload_pixels): their normalisation
is compiled with the ViT (and captured into its CUDA graph), rather than launched before each call.

`scope` says what is compiled: "vit" the normalisation and the ViT (the tracker's neck runs eagerly after
it), "encoder" those and the tracker's neck as one graph (pixels → the four tensors an ImageEmbedding holds). With
`freezing`, inductor treats the weights and buffers as constants while it compiles the buckets (its
`freezing` option): what depends only on them, such as the rotary tables computed from the ViT's position
buffers at every call, is computed once at compile time; a batch size compiled later, outside the warm-up,
is compiled without it.

With `dynamic_batch`, the buckets above 1 share one graph compiled with a symbolic batch dimension (marked
dynamic from 2 up; dynamo specialises a dimension of size 1, so bucket 1 keeps a static graph of its own):
two compilations instead of one per bucket, and a larger `max_batch_size` set later compiles nothing new.
The CUDA graphs are still captured per bucket.

No CUDA-graph modes: inductor records its graphs per thread, and the encoder is called from a pool of
worker threads (docs/sam3.md: a recording broken by another thread's kernels on the H200, an
AssertionError with the calls moved to one thread of their own on the H100). Instead, with `cuda_graph`
(on CUDA), each bucket's compiled forward is captured by hand into a plain torch.cuda.CUDAGraph during the
warm-up, once the buckets have compiled, and replayed from any worker thread, one call at a time
(deployments/cuda_graphs.py: a lock over copy-in, replay and copy-out; one memory pool for all buckets). A
bucket whose capture fails keeps the compiled function (a warning in the log); the replica still starts.
"""
from __future__ import annotations

import logging
import time

from .encoder import encode_core, vit_on_pixels

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


def cuda_graph_wanted(settings, device) -> bool:
    """settings: Sam3Settings. `cuda_graph` acts where the encoder is compiled on CUDA, in either
    mode `compile_mode` accepts (neither records CUDA graphs of its own): the graphs are captured from
    the compiled function; off CUDA there is nothing to capture."""
    return bool(settings.cuda_graph and device.type == "cuda" and compile_wanted(settings.compile, device))


class CompiledEncoder:
    """Callable uint8 pixels (B x S x S x 3) → (spatial B x C x g x g, high_res_feats_0, high_res_feats_1,
    image_embed), compiled per bucket."""

    def __init__(self, models, buckets: tuple[int, ...], mode: str = "default", backend: str = "inductor",
                 scope: str = "vit", cuda_graph: bool = False, freezing: bool = False, dynamic_batch: bool = False):
        """models: the loaded Sam3Models; encoder.encode_core is what runs. cuda_graph: capture each
        bucket into a CUDA graph during the warm-up (on CUDA; elsewhere nothing is captured).
        dynamic_batch: one graph for every bucket above 1 (module docstring)."""
        import torch
        import torch._dynamo

        self.buckets, self.mode, self.scope, self.dynamic_batch = buckets, mode, scope, dynamic_batch
        self.freezing = freezing and backend == "inductor"
        self.warmup_s: float | None = None
        self.capture_s: float | None = None
        # dynamic=None lets the batch dimension marked in __call__ be symbolic; nothing else ever changes shape.
        kwargs = {"backend": backend, "dynamic": None if dynamic_batch else False}
        if backend == "inductor":
            kwargs["mode"] = mode
        vit = vit_on_pixels(models)  # its normalisation constants made here, outside the compiled code
        if scope == "encoder":
            self._fn = torch.compile(lambda p: encode_core(models, p, vit), **kwargs)
        else:
            compiled_vit = torch.compile(vit, **kwargs)
            self._fn = lambda p: encode_core(models, p, compiled_vit)
        # One graph per bucket: make sure dynamo keeps them all rather than falling back to eager.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(buckets))
        self.graph = None  # the CUDA graphs of the buckets in `graphed`
        self.graphed: set[int] = set()
        if cuda_graph:
            from ...cuda_graphs import GraphedCallable

            self.graph = GraphedCallable(self._fn, max_graphs=len(buckets), threaded=True, share_pool=True)

    def set_buckets(self, buckets: tuple[int, ...], size: int, device) -> None:
        """Serve batches up to a new size: compiles (warms up) the buckets not compiled yet."""
        import torch._dynamo

        new = tuple(b for b in buckets if b not in self.buckets)
        self.buckets = buckets
        if self.graph is not None:
            self.graph.max_graphs += len(new)  # one graph (or failed capture) per bucket warmed up
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(buckets))
        if new:
            self.warm_up(size, device, new)

    def bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        return n  # larger than any bucket (a direct caller): compiled for that shape on first use

    def __call__(self, pixels):
        import torch

        pixels = pixels.contiguous()  # the layout compiled for; another layout would recompile
        n = pixels.shape[0]
        b = self.bucket(n)
        if b != n:
            pixels = torch.cat([pixels, pixels.new_zeros((b - n, *pixels.shape[1:]))])
        if self.dynamic_batch and b > 1:
            torch._dynamo.maybe_mark_dynamic(pixels, 0)
        # A graph's static input was made under inference mode (the warm-up's, encode_images'): only
        # such calls replay it.
        graphed = b in self.graphed and torch.is_inference_mode_enabled()
        return tuple(t[:n] for t in (self.graph if graphed else self._fn)(pixels))

    def warm_up(self, size: int, device, buckets: tuple[int, ...] | None = None) -> float:
        """Compile every bucket (or those given) now, on black images, then capture their CUDA graphs
        when asked for (on CUDA); → seconds spent, capture included."""
        import torch
        import torch._inductor.config

        t = time.perf_counter()
        buckets = buckets or self.buckets
        with torch.inference_mode(), torch._inductor.config.patch(freezing=self.freezing):
            for b in buckets:
                self(_black(b, size, device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        log.info("SAM 3 %s compiled (%s) for batch sizes %s in %.1f s", self.scope, self.mode, self.buckets,
                 time.perf_counter() - t)
        if self.graph is not None and device.type == "cuda":
            self._capture(buckets, size, device)
        self.warmup_s = time.perf_counter() - t
        return self.warmup_s

    def _capture(self, buckets: tuple[int, ...], size: int, device) -> None:
        """One CUDA graph per bucket, from the function already compiled for it. A bucket whose capture
        fails (CudaGraphReplay logs why) is left out of `graphed`: it runs the compiled function."""
        import torch

        t = time.perf_counter()
        with torch.inference_mode():
            for b in buckets:
                before = self.graph.captures
                self.graph(_black(b, size, device))
                if self.graph.captures > before:
                    self.graphed.add(b)
        torch.cuda.synchronize(device)
        self.capture_s = (self.capture_s or 0.0) + time.perf_counter() - t
        log.info("SAM 3 %s: CUDA graphs for batch sizes %s (of %s) captured in %.1f s", self.scope,
                 sorted(self.graphed), list(self.buckets), self.capture_s)

    def graph_stats(self) -> dict | None:
        """What the CUDA graphs did: None when the setting is off or nothing runs on CUDA."""
        if self.graph is None or self.capture_s is None:
            return None
        return {"batch_sizes": sorted(self.graphed), "captures": self.graph.captures, "replays": self.graph.replays,
                "capture_s": round(self.capture_s, 2)}


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
        cuda_graph=cuda_graph_wanted(settings, models.device),
        freezing=settings.compile_freezing,
        dynamic_batch=settings.compile_dynamic_batch,
    )
    compiled.warm_up(models.pixels.size, models.device)
    return compiled


def _black(batch: int, size: int, device):
    """A batch of black images as the encoder takes them (uint8 B x S x S x 3): the warm-up's input."""
    import torch

    return torch.zeros((batch, size, size, 3), device=device, dtype=torch.uint8)
