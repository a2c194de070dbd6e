"""Speed levers around upstream's SAM 3D generators, each behind a Sam3dSettings switch.

- `compile_blocks`: a flow transformer's blocks compiled with torch.compile at start (the
  warm-up request pays for it): the geometry stage's by default, the appearance stage's
  (sparse, a token count per request, so dynamic shapes) behind `compile_appearance`
  (measured gains: docs/sam3d.md).
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
    """The members of `module`'s top-level ModuleLists (a DiT's blocks)."""
    return [b for m in module.children() if isinstance(m, torch.nn.ModuleList) for b in m]


def compile_blocks(module, blocks=None, **compile_kwargs) -> int:
    """torch.compile each transformer block of `module` (the members of its top-level
    ModuleLists, or the given `blocks`) in place; returns how many. Compiling the whole
    stage-1 backbone breaks dynamo on upstream's numpy time embedding; its blocks have fixed
    shapes and compile."""
    blocks = transformer_blocks(module) if blocks is None else list(blocks)
    for block in blocks:
        block.compile(**compile_kwargs)
    return len(blocks)


class LatentColors:
    """Per-run affine map latent (V, C) → colour (V, 3), refitted from the full decoder."""

    def __init__(self, refit_every: int):
        self.refit_every = max(1, int(refit_every))
        self.weights: np.ndarray | None = None
        self.calls = 0

    def due(self) -> bool:
        return self.weights is None or self.calls % self.refit_every == 0

    def fit(self, latent: np.ndarray, colors: np.ndarray) -> None:
        a = np.concatenate([latent.astype(np.float64), np.ones((len(latent), 1))], axis=1)
        self.weights, *_ = np.linalg.lstsq(a, colors.astype(np.float64), rcond=None)
        self.calls += 1

    def __call__(self, latent: np.ndarray) -> np.ndarray:
        self.calls += 1
        a = np.concatenate([latent.astype(np.float64), np.ones((len(latent), 1))], axis=1)
        return np.clip(np.rint(a @ self.weights), 0, 255).astype(np.uint8)
