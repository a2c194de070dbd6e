"""The SAM 3D speed levers on CPU: batched CFG gives upstream's two-pass result, and the
latent→colour preview map. Upstream's own CFG class is used where it imports; a stand-in with
the same contract (backbone, _make_unconditional_args, _cfg_step) otherwise."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from deployments.reconstructor.sam3d_levers import (LatentColors, batched_inner_forward,
                                                    install_batched_cfg)


class Backbone(torch.nn.Module):
    """A dict-latent model with per-sample time and a condition, like stage 1's MM-DiT."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(8, 8, generator=g)
        self.calls = []

    def forward(self, x, t, cond, d=None):
        self.calls.append(x["shape"].shape[0])
        bias = cond.mean(dim=(1, 2))[:, None, None] + t[:, None, None] / 1000
        if d is not None:
            bias = bias + d[:, None, None]
        return {k: torch.tanh(v @ self.w[: v.shape[-1], : v.shape[-1]] + bias) for k, v in x.items()}


class StandInCFG(torch.nn.Module):
    """Upstream's inference contract: zeroed conditions for the unconditional pass."""

    def __init__(self, backbone, strength=3.0):
        super().__init__()
        self.backbone, self.strength = backbone, strength

    def _make_unconditional_args(self, args, kwargs):
        z = lambda v: torch.zeros_like(v) if torch.is_tensor(v) else v  # noqa: E731
        return tuple(z(a) for a in args), {k: z(v) for k, v in kwargs.items()}

    def _cfg_step(self, y_cond, y_uncond, strength):
        return {k: (1 + strength) * y_cond[k] - strength * y_uncond[k] for k in y_cond}

    def inner_forward(self, x, t, is_cond, strength, *args, **kwargs):
        y_cond = self.backbone(x, t, *args, **kwargs)
        if is_cond:
            return y_cond
        args_un, kwargs_un = self._make_unconditional_args(args, kwargs)
        return self._cfg_step(y_cond, self.backbone(x, t, *args_un, **kwargs_un), strength)


def inputs():
    g = torch.Generator().manual_seed(1)
    x = {"shape": torch.randn(1, 64, 8, generator=g), "pose": torch.randn(1, 1, 4, generator=g)}
    return x, torch.tensor([300.0]), torch.randn(1, 5, 16, generator=g)


@pytest.mark.parametrize("is_cond", [False, True])
def test_batched_cfg_equals_two_passes(is_cond):
    x, t, cond = inputs()
    cfg = StandInCFG(Backbone())
    ref = cfg.inner_forward(x, t, is_cond, 3.0, cond, d=torch.tensor([0.0]))
    cfg.backbone.calls.clear()
    out = batched_inner_forward(cfg, x, t, is_cond, 3.0, cond, d=torch.tensor([0.0]))
    for k in ref:
        assert torch.allclose(out[k], ref[k], atol=1e-6)
    assert cfg.backbone.calls == ([1] if is_cond else [2])  # one pass, batch of two


def test_unbatchable_arguments_fall_back_to_two_passes():
    x, t, cond = inputs()
    coords = np.zeros((64, 4), np.int32)  # sparse coords, as stage 2 passes them
    cfg = StandInCFG(Backbone())
    cfg.backbone.forward = types.MethodType(
        lambda self, x, t, cond, coords: Backbone.forward(self, x, t, cond), cfg.backbone)
    ref = cfg.inner_forward(x, t, False, 3.0, cond, coords)
    cfg.backbone.calls.clear()
    out = batched_inner_forward(cfg, x, t, False, 3.0, cond, coords)
    assert cfg.backbone.calls == [1, 1]
    assert all(torch.equal(out[k], ref[k]) for k in ref)


def test_install_and_uninstall():
    gen = types.SimpleNamespace(reverse_fn=StandInCFG(Backbone()))
    assert install_batched_cfg(gen)
    assert gen.reverse_fn.inner_forward.__func__ is batched_inner_forward
    install_batched_cfg(gen, False)
    assert gen.reverse_fn.inner_forward.__func__ is StandInCFG.inner_forward
    assert not install_batched_cfg(types.SimpleNamespace(reverse_fn=torch.nn.Identity()))


def test_upstream_cfg_class_where_installed(monkeypatch):
    monkeypatch.setenv("LIDRA_SKIP_INIT", "true")
    try:
        from sam3d_objects.model.backbone.generator.classifier_free_guidance import (
            ClassifierFreeGuidance)
    except ImportError as exc:
        pytest.skip(f"upstream sam3d_objects does not import here: {exc}")
    x, t, cond = inputs()
    cfg = ClassifierFreeGuidance(Backbone(), strength=3.0, interval=[0, 1000]).eval()
    ref = cfg(x, t, cond, d=torch.tensor([0.0]))
    install_batched_cfg(types.SimpleNamespace(reverse_fn=cfg))
    cfg.backbone.calls.clear()
    out = cfg(x, t, cond, d=torch.tensor([0.0]))
    assert cfg.backbone.calls == [2]
    assert all(torch.allclose(out[k], ref[k], atol=1e-6) for k in ref)


def test_latent_colors_recover_an_affine_map_and_refit_on_schedule():
    g = np.random.default_rng(0)
    a, b = g.normal(size=(8, 3)) * 5, np.array([128.0, 100.0, 90.0])  # stays inside 0..255
    fit = LatentColors(refit_every=3)
    schedule = []
    for _ in range(7):
        latent = g.normal(size=(500, 8))
        truth = np.clip(np.rint(latent @ a + b), 0, 255).astype(np.uint8)
        if fit.due():
            schedule.append("fit")
            fit.fit(latent, truth)
        else:
            schedule.append("map")
            approx = fit(latent)
            assert np.abs(approx.astype(int) - truth.astype(int)).max() <= 1  # rounding only
    assert schedule == ["fit", "map", "map", "fit", "map", "map", "fit"]
