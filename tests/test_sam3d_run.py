"""EulerRun (deployments/reconstructor/sam3d_run.py), our step-by-step sampler, against upstream's
own generate_iter, where the upstream sam3d_objects package imports; skipped elsewhere.
"""
from __future__ import annotations

import pytest


def _import_upstream_generators():
    import sys

    from deployments.reconstructor import sam3d_upstream

    root = sam3d_upstream.vendored_root()
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        shortcut = pytest.importorskip("sam3d_objects.model.backbone.generator.shortcut.model",
                                       reason="upstream sam3d_objects is not installed")
        flow = pytest.importorskip("sam3d_objects.model.backbone.generator.flow_matching.model",
                                   reason="upstream sam3d_objects is not installed")
    except ImportError as exc:  # installed, but a dependency is missing
        pytest.skip(f"upstream sam3d_objects does not import here: {exc}")
    return shortcut.ShortCut, flow.FlowMatching


@pytest.mark.parametrize("no_shortcut", [True, False])
def test_euler_run_matches_upstream_generate_iter(no_shortcut, monkeypatch):
    """Our step-by-step loop reproduces upstream's own sampler, given the same noise."""
    monkeypatch.setenv("LIDRA_SKIP_INIT", "true")
    ShortCut, FlowMatching = _import_upstream_generators()
    import torch

    from deployments.reconstructor.sam3d_run import EulerRun

    g = torch.Generator().manual_seed(0)
    w = {"shape": torch.randn(8, 8, generator=g) * 0.3, "scale": torch.randn(3, 3, generator=g) * 0.3}
    cond = torch.randn(1, 5, 4, generator=g)

    def dynamics(x, t, c, d=None):
        dd = 0.0 if d is None else float(d)
        return {k: torch.tanh(x[k] @ w[k] + t / 1000 + dd / 1000 + c.mean()) for k in x}

    gen = ShortCut(reverse_fn=dynamics, inference_steps=6, rescale_t=3, no_shortcut=no_shortcut)
    noise = {"shape": torch.randn(1, 64, 8, generator=g), "scale": torch.randn(1, 1, 3, generator=g)}
    gen._generate_noise = lambda shape, device: {k: v.clone() for k, v in noise.items()}
    for _, ref, _ in gen.generate_iter({"shape": (1, 64, 8), "scale": (1, 1, 3)}, "cpu", cond):
        pass
    times, d = gen._prepare_t_and_d(6)
    run = EulerRun(gen, {k: v.clone() for k, v in noise.items()}, times, (d,), (cond,), {})
    for _ in range(run.total):
        run.step()
    for k in ref:
        assert torch.allclose(run.x[k], ref[k], atol=1e-6)
        assert torch.allclose(run.x_hat[k], run.x[k], atol=1e-6)  # at t=1 the preview is the sample

    flow = FlowMatching(reverse_fn=lambda x, t, c: torch.tanh(x * 0.5 + t / 1000 + c.mean()),
                        inference_steps=4, rescale_t=3)
    x0 = torch.randn(1, 50, 8, generator=g)
    flow._generate_noise = lambda shape, device: x0.clone()
    for _, ref_x, _ in flow.generate_iter((1, 50, 8), "cpu", cond):
        pass
    run = EulerRun(flow, x0.clone(), flow._prepare_t(4), (), (cond,), {})
    for _ in range(run.total):
        run.step()
    assert torch.allclose(run.x, ref_x, atol=1e-6)
