"""Speed levers around upstream's SAM 3D generators, each behind a Sam3dSettings switch.

- `batched_cfg`: upstream's classifier-free guidance runs the backbone twice per step, once
  with the conditions and once with them zeroed. Where every argument has a batch axis of one
  (the geometry stage's dense latents), both passes go through the backbone as one batch of
  two; anything else (the appearance stage's sparse coords, unequal shared values) falls back
  to upstream's two passes. Same arithmetic, half the kernel launches.
- `LatentColors`: an appearance preview without the Gaussian decoder. At the first preview of
  a run (and every `refit_every`-th after) the decoder runs and a least-squares affine map from
  each voxel's 8 latent channels to its decoded colour is fitted; previews in between apply
  that map (a few microseconds), like the latent-to-RGB previews of image diffusion UIs. The
  final assets always come from the full decoders.
"""
from __future__ import annotations

import types

import numpy as np
import torch


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _leaves(v)
    else:
        yield tree


def _pair(a, b, batch: int):
    """a and b joined on the batch axis, or shared when identical; None when neither works."""
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return None
        out = {k: _pair(a[k], b[k], batch) for k in a}
        return None if any(v is None for v in out.values()) else out
    if isinstance(a, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return None
        out = [_pair(x, y, batch) for x, y in zip(a, b)]
        return None if any(v is None for v in out) else type(a)(out)
    if torch.is_tensor(a):
        if not torch.is_tensor(b) or a.shape != b.shape:
            return None
        if a.dim() > 0 and a.shape[0] == batch:
            return _Joined(torch.cat([a, b]))
        return a if (a is b or torch.equal(a, b)) else None
    if isinstance(a, np.ndarray):
        return None  # e.g. sparse coords: not batchable this way
    return a if (a is b or a == b) else None


class _Joined:
    """Marks a tensor joined from the two passes (unwrapped before the call)."""

    def __init__(self, t):
        self.t = t


def _unwrap(tree):
    if isinstance(tree, _Joined):
        return tree.t
    if isinstance(tree, dict):
        return {k: _unwrap(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_unwrap(v) for v in tree)
    return tree


def _split(tree, batch: int):
    if isinstance(tree, dict):
        halves = {k: _split(v, batch) for k, v in tree.items()}
        return {k: v[0] for k, v in halves.items()}, {k: v[1] for k, v in halves.items()}
    return tree[:batch], tree[batch:]


def batched_inner_forward(self, x, t, is_cond, strength, *args_cond, **kwargs_cond):
    """Drop-in for upstream's `ClassifierFreeGuidance.inner_forward` (bound to an instance)."""
    if is_cond:
        return self.backbone(x, t, *args_cond, **kwargs_cond)
    args_un, kwargs_un = self._make_unconditional_args(args_cond, kwargs_cond)
    batch = next((v.shape[0] for v in _leaves(x) if torch.is_tensor(v) and v.dim() > 0), None)
    joined = None if batch is None else _pair((x, t, tuple(args_cond), kwargs_cond),
                                             (x, t, tuple(args_un), kwargs_un), batch)
    if joined is None:
        y_cond = self.backbone(x, t, *args_cond, **kwargs_cond)
        y_uncond = self.backbone(x, t, *args_un, **kwargs_un)
        return self._cfg_step(y_cond, y_uncond, strength)
    x2, t2, args2, kwargs2 = _unwrap(joined)
    y_cond, y_uncond = _split(self.backbone(x2, t2, *args2, **kwargs2), batch)
    return self._cfg_step(y_cond, y_uncond, strength)


def install_batched_cfg(generator, enabled: bool = True) -> bool:
    """Batch (or, with enabled=False, stop batching) the CFG passes of one upstream generator,
    whose `reverse_fn` is the CFG module. Returns whether the generator has CFG to batch."""
    cfg = getattr(generator, "reverse_fn", None)
    if cfg is None or not hasattr(cfg, "inner_forward") or not hasattr(cfg, "_make_unconditional_args"):
        return False
    if enabled:
        cfg.inner_forward = types.MethodType(batched_inner_forward, cfg)
    else:
        cfg.__dict__.pop("inner_forward", None)
    return True


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
