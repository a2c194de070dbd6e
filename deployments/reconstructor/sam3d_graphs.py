"""Fixed-shape GPU work of a SAM 3D request replayed from CUDA graphs.

The stage-1 flow transformer's 24 blocks see the same shapes in every call (4,096 shape tokens
plus the pose tokens, the same number of condition tokens for every photo, once per CFG pass),
and each pass launches hundreds of kernels from Python, and on a host with slow launches the wall time was far above
the kernel time (H100 run 9: geometry steps of 93-110 ms against 55.5 ms of kernels). A
`CudaGraphReplay` runs its work eagerly the first time it sees a set of input shapes (under a
given autocast state), on a side stream, then captures one call into a CUDA graph; later calls
copy their tensors into the graph's static inputs, replay it, and return copies of its outputs
(a CFG step holds the conditional pass's output while the unconditional pass replays). Off
CUDA, with autograd on, once a capture has failed for those shapes, or past `max_graphs`
distinct shapes, the work runs eagerly, as upstream runs it. Replays share their graph's static
buffers, so calls must come one at a time on one stream, as the reconstructor's single GPU
worker thread makes them.

The appearance stage's shapes are fixed within a request (its voxel count, for all its steps and
both CFG passes) and change between requests: `DenseTrunk` keeps one graph, replaced when the
count changes, and its first pass at a new count is the warm-up (run eagerly, its result used),
so a request pays one capture and no extra pass.
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch.utils import _pytree

log = logging.getLogger(__name__)


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

    def __init__(self, warmup_calls: int = 2, max_graphs: int = 4, evict: bool = False):
        """`warmup_calls` eager calls on copies of the inputs before a capture; 0: the call that
        meets new shapes runs eagerly and its result is returned, then it is captured.
        `max_graphs` captures at most; past it, new shapes run eagerly or, with `evict`, the
        graphs held are dropped for the new one; with `evict` a failed capture switches
        replaying off (`enabled`) rather than retrying at every new shape."""
        super().__init__()
        self.enabled = True
        self.warmup_calls = warmup_calls
        self.max_graphs = max_graphs
        self.evict = evict
        self._graphs: dict[tuple, _Captured | None] = {}
        self.replays = 0
        self.captures = 0

    def run(self, *args, **kwargs):
        raise NotImplementedError

    def reset(self) -> None:
        """Drop every captured graph (after the modules change, e.g. compiled or not)."""
        self._graphs.clear()

    def forward(self, *args, **kwargs):
        leaves, spec = _pytree.tree_flatten((args, kwargs))
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        if (not self.enabled or torch.is_grad_enabled() or not tensors
                or not all(t.is_cuda for t in tensors)):
            return self.run(*args, **kwargs)
        # Non-tensor arguments are baked into a capture: they are part of its key.
        key = (str(spec), tuple((tuple(t.shape), t.dtype, t.stride()) if isinstance(t, torch.Tensor)
                                else repr(t) for t in leaves),
               torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        if key not in self._graphs:
            if len(self._graphs) >= self.max_graphs:
                if not self.evict:
                    return self.run(*args, **kwargs)
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
            return self.run(*args, **kwargs)
        for static, new in zip(captured.inputs, tensors):
            static.copy_(new)
        captured.graph.replay()
        self.replays += 1
        return _pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t,
                                captured.outputs)

    def _capture(self, leaves, spec) -> _Captured | None:
        static_leaves = [t.clone() if isinstance(t, torch.Tensor) else t for t in leaves]
        args, kwargs = _pytree.tree_unflatten(static_leaves, spec)
        try:
            # The warm-up runs under the capture's exact torch state (compiled blocks guard on
            # the autocast cache setting too), so that any compiling happens before capture.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), _uncached_autocast():
                for _ in range(self.warmup_calls):  # compile, pick kernels, fill caches
                    self.run(*args, **kwargs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), _uncached_autocast():
                outputs = self.run(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a failed capture falls back to eager work
            log.warning("%s: CUDA graph capture failed, running eagerly: %s",
                        type(self).__name__, exc)
            return None
        self.captures += 1
        return _Captured(graph, [t for t in static_leaves if isinstance(t, torch.Tensor)], outputs)


class GraphedTrunk(CudaGraphReplay):
    """`for block in blocks: h = block(h, *rest)` as one module. Installed as the single
    member of the backbone's `blocks` ModuleList, so upstream's forward
    (`for block in self.blocks: h = block(h, t_emb, cond)`) calls it once."""

    def __init__(self, blocks: torch.nn.ModuleList, **kwargs):
        super().__init__(**kwargs)
        self.blocks = blocks

    def run(self, h, *rest):
        for block in self.blocks:
            h = block(h, *rest)
        return h


class DenseTrunk(CudaGraphReplay):
    """The appearance transformer's blocks as one module, installed as the single member of
    its backbone's `blocks` (upstream's forward: `for block in self.blocks: h = block(h, t_emb,
    cond)` on a SparseTensor). When every block has a dense forward (`sam3d_dense`, its
    `dense_fn`) and the input is one object, the blocks run on the feature matrix and are
    replayed from one CUDA graph per token count (see the module's docstring); otherwise they
    run as upstream's loop."""

    def __init__(self, blocks: torch.nn.ModuleList):
        super().__init__(warmup_calls=0, max_graphs=1, evict=True)
        self.blocks = blocks

    def forward(self, x, mod, context):
        if (x.shape[0] != 1 or context.dim() != 3 or context.shape[0] != 1
                or not all(callable(getattr(b, "dense_fn", None)) for b in self.blocks)):
            for block in self.blocks:
                x = block(x, mod, context)
            return x
        return x.replace(super().forward(x.feats, mod, context))

    def run(self, feats, mod, context):
        for block in self.blocks:
            if feats.shape[0] > 1:
                torch._dynamo.maybe_mark_dynamic(feats, 0)  # compiled once for every count
            feats = block.dense_fn(feats, mod, context)
        return feats


def install_dense_trunk(backbone) -> DenseTrunk:
    """Put the appearance backbone's blocks behind one DenseTrunk (idempotent)."""
    return _install(backbone, DenseTrunk)


def dense_trunk(backbone) -> DenseTrunk | None:
    return _installed(backbone, DenseTrunk)


def install_graphed_trunk(backbone) -> GraphedTrunk:
    """Put the backbone's blocks behind one GraphedTrunk (idempotent)."""
    return _install(backbone, GraphedTrunk)


def graphed_trunk(backbone) -> GraphedTrunk | None:
    return _installed(backbone, GraphedTrunk)


def _install(backbone, cls):
    trunk = _installed(backbone, cls)
    if trunk is None:
        trunk = cls(backbone.blocks)
        backbone.blocks = torch.nn.ModuleList([trunk])
    return trunk


def _installed(backbone, cls):
    blocks = getattr(backbone, "blocks", None)
    if blocks is not None and len(blocks) == 1 and isinstance(blocks[0], cls):
        return blocks[0]
    return None
