"""Speed levers around upstream's SAM 3D generators, each behind a Sam3dSettings switch.

- `apply_speed_settings` puts the generators in the state the settings ask for, and can be
  called again with other settings (the benchmark switches levers one at a time):
  - `compile_geometry`: the stage-1 flow transformer's blocks compiled with torch.compile
    (the warm-up request pays for it);
  - `geometry_cuda_graph`: those blocks replayed as one CUDA graph per pass
    (`sam3d_graphs.GraphedTrunk`);
  - `dense_appearance` / `compile_appearance`: the appearance transformer's blocks on plain
    feature tensors, eager or compiled with a dynamic token count (`sam3d_dense`);
  - `appearance_cuda_graph`: those dense blocks replayed as one CUDA graph per request
    (`sam3d_graphs.DenseTrunk`);
  - `compile_occupancy_decoder`: the geometry previews' occupancy decoder compiled.
  Measured gains: docs/sam3d.md and docs/sam3d_runs.md (the latest run in the README).
- `LatentColors`: an appearance preview without the Gaussian decoder. At the first preview of
  a run (and every `refit_every`-th after) the decoder runs and a least-squares affine map from
  each voxel's 8 latent channels to its decoded colour is fitted; previews in between apply
  that map (a few microseconds), like the latent-to-RGB previews of image diffusion UIs. The
  final assets always come from the full decoders.
"""
from __future__ import annotations

import numpy as np
import torch


def transformer_blocks(module) -> list:
    """The members of `module`'s top-level ModuleLists (a DiT's blocks), looking through a
    GraphedTrunk or DenseTrunk to the blocks it runs."""
    from .sam3d_graphs import DenseTrunk, GraphedTrunk

    return [inner for m in module.children() if isinstance(m, torch.nn.ModuleList) for b in m
            for inner in (b.blocks if isinstance(b, (GraphedTrunk, DenseTrunk)) else [b])]


def compile_blocks(module, **compile_kwargs) -> int:
    """torch.compile each transformer block of `module` (the members of its top-level
    ModuleLists) in place; returns how many. Compiling the whole stage-1 backbone breaks dynamo
    on upstream's numpy time embedding; its blocks have fixed shapes and compile."""
    blocks = transformer_blocks(module)
    for block in blocks:
        block.compile(**compile_kwargs)
    return len(blocks)


def apply_speed_settings(models: dict, settings, cuda: bool) -> int:
    """Configure the pipeline's generators as `settings` asks (CUDA-only levers stay off
    without CUDA); returns how many blocks are compiled. Safe to call again with new settings:
    blocks are (un)compiled, dense forwards installed or removed, captured graphs dropped."""
    from .sam3d_dense import install_dense_blocks, remove_dense_blocks
    from .sam3d_graphs import dense_trunk, graphed_trunk, install_dense_trunk, install_graphed_trunk

    geometry = models["ss_generator"].reverse_fn.backbone
    appearance = models["slat_generator"].reverse_fn.backbone
    compiled = 0
    if cuda and settings.compile_geometry:
        compiled += compile_blocks(geometry, mode=settings.compile_mode)
    else:
        for block in transformer_blocks(geometry):
            block._compiled_call_impl = None
    app_trunk = dense_trunk(appearance)
    app_blocks = list(app_trunk.blocks if app_trunk is not None else
                      getattr(appearance, "blocks", None) or transformer_blocks(appearance))
    remove_dense_blocks(app_blocks)
    dense = settings.dense_appearance or settings.compile_appearance
    if dense:
        compile_dense = cuda and settings.compile_appearance
        changed = install_dense_blocks(
            app_blocks, {"mode": settings.compile_mode} if compile_dense else None)
        compiled += changed if compile_dense else 0
    app_graph = bool(cuda and dense and settings.appearance_cuda_graph)
    if app_graph and app_trunk is None and getattr(appearance, "blocks", None) is not None:
        app_trunk = install_dense_trunk(appearance)
    if app_trunk is not None:
        app_trunk.reset()  # captured with the blocks as they were
        app_trunk.enabled = app_graph
    decoder = models["ss_decoder"]
    if cuda and settings.compile_occupancy_decoder:
        decoder.compile(mode=settings.compile_mode)
        compiled += 1
    else:
        decoder._compiled_call_impl = None
    trunk = graphed_trunk(geometry)
    if cuda and settings.geometry_cuda_graph and trunk is None:
        trunk = install_graphed_trunk(geometry)
    if trunk is not None:
        trunk.reset()  # captured with the blocks as they were
        trunk.enabled = bool(cuda and settings.geometry_cuda_graph)
    return compiled


class LatentColors:
    """Per-run affine map latent (V, C) → colour (V, 3), refitted from the full decoder."""

    def __init__(self, refit_every: int):
        self.refit_every = max(1, int(refit_every))
        self.weights: np.ndarray | None = None
        self.previews = 0

    def due(self) -> bool:
        """Whether this preview (asked once per preview, in order) refits: the first and every
        refit_every-th. Counted here, not in fit/__call__, so that the schedule holds when the
        previews are settled later, on another thread (sam3d_host)."""
        due = self.previews % self.refit_every == 0
        self.previews += 1
        return due

    def fit(self, latent: np.ndarray, colors: np.ndarray) -> None:
        a = np.concatenate([latent.astype(np.float64), np.ones((len(latent), 1))], axis=1)
        self.weights, *_ = np.linalg.lstsq(a, colors.astype(np.float64), rcond=None)

    def __call__(self, latent: np.ndarray) -> np.ndarray:
        a = np.concatenate([latent.astype(np.float64), np.ones((len(latent), 1))], axis=1)
        return np.clip(np.rint(a @ self.weights), 0, 255).astype(np.uint8)
