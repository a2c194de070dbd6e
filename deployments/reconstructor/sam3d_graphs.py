"""Fixed-shape GPU work of a SAM 3D request replayed from CUDA graphs (deployments/cuda_graphs.py).

The stage-1 flow transformer's 24 blocks see the same shapes in every call (4,096 shape tokens
plus the pose tokens, the same number of condition tokens for every photo, once per CFG pass),
and each pass launches hundreds of kernels from Python, and on a host with slow launches the wall time was far above
the kernel time (H100 run 9: geometry steps of 93-110 ms against 55.5 ms of kernels).
`GraphedTrunk` puts those blocks behind one `CudaGraphReplay`: the first call at a set of shapes
warms up and captures, later calls replay, and each returns copies of the graph's outputs (a CFG
step holds the conditional pass's output while the unconditional pass replays). Its calls come
one at a time, from the reconstructor's single GPU worker thread, on one stream.

The appearance stage's shapes are fixed within a request (its voxel count, for all its steps and
both CFG passes) and change between requests: `DenseTrunk` keeps one graph, replaced when the
count changes, and its first pass at a new count is the warm-up (run eagerly, its result used),
so a request pays one capture and no extra pass.
"""
from __future__ import annotations

import torch

from ..cuda_graphs import CudaGraphReplay


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
