"""The SAM 3D speed levers on CPU: per-block compilation keeps the output, and the
latent→colour preview map refits on schedule and reproduces an affine colour map."""
from __future__ import annotations

import numpy as np
import torch

from deployments.reconstructor.sam3d_levers import LatentColors, compile_blocks


class Blocks(torch.nn.Module):
    """A backbone shaped like stage 1's: embedding, a ModuleList of blocks, an output layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Linear(8, 16)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(16), torch.nn.Linear(16, 16), torch.nn.GELU())
            for _ in range(3))
        self.out = torch.nn.Linear(16, 8)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def test_compile_blocks_compiles_each_block_and_keeps_the_output():
    model = Blocks().eval()
    x = torch.randn(2, 64, 8)
    with torch.no_grad():
        eager = model(x)
        assert compile_blocks(model, backend="aot_eager") == 3  # dynamo capture, no C++ build
        assert all(b._compiled_call_impl is not None for b in model.blocks)
        assert model.embed._compiled_call_impl is None
        assert torch.allclose(model(x), eager, atol=1e-6)


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
