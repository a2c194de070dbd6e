"""Fixed-shape GPU work replayed from CUDA graphs that we capture ourselves (torch.cuda.CUDAGraph).

Work that sees the same shapes call after call (a transformer's blocks, an image encoder padded to
a few batch sizes) launches hundreds of kernels from Python each time; replayed from a CUDA graph,
they are launched in one go. A `CudaGraphReplay` runs its work (`run`) eagerly the first time it
sees a set of input shapes (under a given autocast state), on a side stream, then captures one
call into a CUDA graph; later calls copy their tensors into the graph's static inputs, replay it,
and return copies of its outputs. Off CUDA, with autograd on, once a capture has failed for those
shapes, or past `max_graphs` distinct shapes, the work runs eagerly, as `run` says.

This is a plain capture, not inductor's CUDA-graph trees (torch.compile's "reduce-overhead"):
those record per thread, while a graph captured here replays from any thread.

Replays of a graph share its static buffers. By default calls must come one at a time, on one
stream (the reconstructor's single GPU worker thread makes them so). With `threaded`, a lock is
held over each call's copy-in, replay and copy-out, and over captures, so calls may come from
several threads, as long as they launch on one stream: the lock orders the launches, the stream
orders the GPU work (every thread's default stream is the same legacy default stream). A capture
then also tolerates other threads' CUDA calls (capture mode "thread_local" instead of "global").
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable

import torch
from torch.utils import _pytree

log = logging.getLogger(__name__)

_EAGER = object()  # CudaGraphReplay._graphed's answer: run the work eagerly (outside the lock)


def _uncached_autocast():
    """The caller's autocast without its weight-cast cache: a captured graph must not read
    cast weights that the cache frees when the caller's autocast context ends."""
    if not torch.is_autocast_enabled("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)


class _Captured:
    def __init__(self, graph, inputs, outputs):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs


class CudaGraphReplay(torch.nn.Module):
    """`self.run(*args, **kwargs)` replayed from one CUDA graph per input signature."""

    def __init__(self, warmup_calls: int = 2, max_graphs: int = 4, evict: bool = False,
                 threaded: bool = False, share_pool: bool = False):
        """`warmup_calls` eager calls on copies of the inputs before a capture; 0: the call that
        meets new shapes runs eagerly and its result is returned, then it is captured.
        `max_graphs` captures at most; past it, new shapes run eagerly or, with `evict`, the
        graphs held are dropped for the new one; with `evict` a failed capture switches
        replaying off (`enabled`) rather than retrying at every new shape.
        `threaded`: calls may come from several threads (see the module's docstring).
        `share_pool`: every graph captured into one memory pool, so the graphs' intermediates
        take the largest graph's memory rather than the sum. Safe because no two graphs ever
        run at once (one call at a time, one stream) and each replay's outputs are copied out
        before another graph can replay: a graph's static outputs stay allocated (it holds
        them), so a later capture never takes their memory for its own; it may take memory
        that an earlier graph used for intermediates (or outputs of its own), which that
        graph writes again before reading at each replay."""
        super().__init__()
        self.enabled = True
        self.warmup_calls = warmup_calls
        self.max_graphs = max_graphs
        self.evict = evict
        self._graphs: dict[tuple, _Captured | None] = {}
        self.replays = 0
        self.captures = 0
        self._lock = threading.Lock() if threaded else contextlib.nullcontext()
        self._capture_mode = "thread_local" if threaded else "global"
        self._share_pool = share_pool
        self._pool = None

    def run(self, *args, **kwargs):
        raise NotImplementedError

    def reset(self) -> None:
        """Drop every captured graph (after the modules change, e.g. compiled or not)."""
        with self._lock:
            self._graphs.clear()

    def forward(self, *args, **kwargs):
        leaves, spec = _pytree.tree_flatten((args, kwargs))
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        if not self._graphable(tensors):
            return self.run(*args, **kwargs)
        # Non-tensor arguments are baked into a capture: they are part of its key.
        key = (str(spec), tuple((tuple(t.shape), t.dtype, t.stride()) if isinstance(t, torch.Tensor)
                                else repr(t) for t in leaves),
               torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        with self._lock:
            out = self._graphed(key, leaves, spec, tensors, args, kwargs)
        return self.run(*args, **kwargs) if out is _EAGER else out

    def _graphable(self, tensors: list[torch.Tensor]) -> bool:
        """Whether a call on these tensors may replay a graph: CUDA tensors, no autograd."""
        return (self.enabled and not torch.is_grad_enabled() and bool(tensors)
                and all(t.is_cuda for t in tensors))

    def _graphed(self, key, leaves, spec, tensors, args, kwargs) -> Any:
        """One call under the lock: replayed (captured first if new) → its outputs, or `_EAGER`
        where the work runs eagerly instead."""
        if key not in self._graphs:
            if len(self._graphs) >= self.max_graphs:
                if not self.evict:
                    return _EAGER
                self._graphs.clear()  # frees the old graph's memory pool with its outputs
            if self.warmup_calls == 0:
                # Under the capture's torch state, so that a compiled block does not compile
                # again for the capture.
                with _uncached_autocast():
                    out = self.run(*args, **kwargs)
                self._graphs[key] = self._capture(leaves, spec)
                if self._graphs[key] is None and self.evict:
                    self.enabled = False  # a failed capture is not retried at every new count
                return out
            self._graphs[key] = self._capture(leaves, spec)
        captured = self._graphs[key]
        if captured is None:
            return _EAGER
        for static, new in zip(captured.inputs, tensors):
            static.copy_(new)
        captured.graph.replay()
        self.replays += 1
        return _pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t,
                                captured.outputs)

    def _capture(self, leaves, spec) -> _Captured | None:
        static_leaves = [t.clone() if isinstance(t, torch.Tensor) else t for t in leaves]
        args, kwargs = _pytree.tree_unflatten(static_leaves, spec)
        caller = torch.cuda.current_stream()
        try:
            # The warm-up runs under the capture's exact torch state (compiled blocks guard on
            # the autocast cache setting too), so that any compiling happens before capture.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), _uncached_autocast():
                for _ in range(self.warmup_calls):  # compile, pick kernels, fill caches
                    self.run(*args, **kwargs)
            torch.cuda.current_stream().wait_stream(side)
            if self._share_pool and self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with (torch.cuda.graph(graph, pool=self._pool, capture_error_mode=self._capture_mode),
                  _uncached_autocast()):
                outputs = self.run(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a failed capture falls back to eager work
            # torch.cuda.graph leaves its capture stream current when ending the capture raises.
            torch.cuda.set_stream(caller)
            log.warning("%s: CUDA graph capture failed, running eagerly: %s",
                        type(self).__name__, exc)
            return None
        self.captures += 1
        return _Captured(graph, [t for t in static_leaves if isinstance(t, torch.Tensor)], outputs)


class GraphedCallable(CudaGraphReplay):
    """`fn(*args, **kwargs)` replayed from CUDA graphs: a CudaGraphReplay around a plain
    callable (a compiled function, say) rather than a module's own work."""

    def __init__(self, fn: Callable, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn

    def run(self, *args, **kwargs):
        return self.fn(*args, **kwargs)
