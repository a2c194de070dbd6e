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
- `set_batched_cfg`: the appearance stage's classifier-free guidance as one backbone call on a
  batch of two (the conditioned and the zero-conditioned copy of the same voxels) instead of
  two calls, behind `batch_cfg_appearance` (measured: docs/sam3d.md).
"""
from __future__ import annotations

import types

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


def _batched_inner_forward(self, x, t, is_cond, strength, *args_cond, **kwargs_cond):
    """ClassifierFreeGuidance.inner_forward for the structured-latent flow with one backbone call.

    Upstream calls the backbone twice: with the condition, and with `cfg=True`, which makes a
    backbone with `force_zeros_cond` use a zero condition. Here both go in one sparse batch: the
    voxels twice (batch index 0 and 1, same order), conditions [cond, 0]. Each batch element
    attends only to itself, so the results are the two calls' results up to kernel rounding.
    Any other guidance layout falls back to upstream's two calls."""
    backbone = self.backbone
    if is_cond or self.unconditional_handling != "add_flag" or not getattr(backbone, "force_zeros_cond", False):
        return type(self).inner_forward(self, x, t, is_cond, strength, *args_cond, **kwargs_cond)
    from sam3d_objects.model.backbone.tdfy_dit.models.structured_latent_flow import SLatFlowModel
    from sam3d_objects.model.backbone.tdfy_dit.modules import sparse as sp

    args, kwargs = list(args_cond), dict(kwargs_cond)
    d = kwargs.pop("d", None)
    coords = kwargs.pop("coords") if "coords" in kwargs else args.pop()
    cond = backbone.condition_embedder(*args, **kwargs)
    coords = torch.as_tensor(coords, device=x.device)
    n = coords.shape[0]
    twin = coords.clone()
    twin[:, 0] = 1
    pair = sp.SparseTensor(feats=torch.cat([x[0], x[0]]), coords=torch.cat([coords, twin]))
    out = SLatFlowModel.forward(backbone, pair, t, torch.cat([cond, torch.zeros_like(cond)]), d).feats
    return self._cfg_step(out[:n][None], out[n:][None], strength)


def set_batched_cfg(guidance, on: bool) -> None:
    """Switch `guidance` (the appearance generator's ClassifierFreeGuidance module) between one
    batched backbone call per guided step and upstream's two calls."""
    if on:
        guidance.__dict__["inner_forward"] = types.MethodType(_batched_inner_forward, guidance)
    else:
        guidance.__dict__.pop("inner_forward", None)
