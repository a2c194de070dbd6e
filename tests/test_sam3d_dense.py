"""The SAM 3D speed levers that change how upstream's transformers run, on the CPU:

- `sam3d_dense`: the appearance blocks on plain feature tensors give upstream's block output
  (eager and compiled with a dynamic token count), fall back to upstream's forward for batches,
  and the whole tiny SLAT flow model gives the same velocity with them;
- `sam3d_graphs.GraphedTrunk`: off CUDA it is exactly the block loop it replaces, and the
  blocks stay reachable for compilation;
- `apply_speed_settings` switches the levers on and off again.

The tests against upstream's classes need `sam3d_objects` (not installable in CI: not on
PyPI, no network to GitHub) and skip without it; tools/gpu_bundle's `--cpu-site` builds a site
where they run.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from deployments.reconstructor.sam3d_dense import (dense_block_forward, install_dense_blocks,
                                                   remove_dense_blocks)
from deployments.reconstructor.sam3d_graphs import (GraphedTrunk, graphed_trunk,
                                                    install_graphed_trunk)
from deployments.reconstructor.sam3d_levers import apply_speed_settings, transformer_blocks
from sam3d_common.settings import Sam3dSettings
from tests.support.sam3d_upstream import randomise, sparse_coords, upstream_sparse


@pytest.mark.parametrize("qk_rms_norm", [True, False])
def test_dense_block_gives_upstreams_block_output(qk_rms_norm):
    sp, Block, _ = upstream_sparse()
    block = randomise(Block(64, 32, num_heads=4, qk_rms_norm=qk_rms_norm).eval())
    coords = sparse_coords(60, 8)
    g = torch.Generator().manual_seed(1)
    x = sp.SparseTensor(feats=torch.randn(len(coords), 64, generator=g), coords=coords)
    mod, context = torch.randn(1, 64, generator=g), torch.randn(1, 7, 32, generator=g)
    with torch.no_grad():
        want = block(x, mod, context).feats
        assert torch.equal(dense_block_forward(block, x.feats, mod, context), want)
        # Converted to half precision as upstream converts the service's blocks (linear
        # layers only): the same operations in the same dtypes, so the same numbers.
        from sam3d_objects.model.backbone.tdfy_dit.modules.utils import (FP16_TYPE,
                                                                         convert_module_to_f16)

        block.apply(convert_module_to_f16)
        half = FP16_TYPE
        xh = x.replace(x.feats.to(half))
        want = block(xh, mod.to(half), context.to(half)).feats
        got = dense_block_forward(block, xh.feats, mod.to(half), context.to(half))
        assert got.dtype == want.dtype == half
        assert torch.equal(got, want)


def test_installed_dense_forward_eager_compiled_and_batch_fallback():
    sp, Block, _ = upstream_sparse()
    blocks = [randomise(Block(64, 32, num_heads=4, qk_rms_norm=True).eval(), seed=i)
              for i in range(2)]
    g = torch.Generator().manual_seed(2)
    mod, context = torch.randn(1, 64, generator=g), torch.randn(1, 5, 32, generator=g)

    def run(x, mod=mod, context=context):
        with torch.no_grad():
            for b in blocks:
                x = b(x, mod, context)
        return x.feats

    inputs = [sp.SparseTensor(feats=torch.randn(len(c), 64, generator=g), coords=c)
              for c in (sparse_coords(40, 8, seed=3), sparse_coords(90, 8, seed=4))]
    want = [run(x) for x in inputs]
    assert install_dense_blocks(blocks) == 2
    assert all(torch.equal(run(x), w) for x, w in zip(inputs, want))
    remove_dense_blocks(blocks)
    assert "forward" not in blocks[0].__dict__
    torch._dynamo.reset()
    assert install_dense_blocks(blocks, {"backend": "aot_eager"}) == 2
    for x, w in zip(inputs, want):  # two token counts, one dynamic graph per block
        assert torch.allclose(run(x), w, atol=1e-5, rtol=1e-5)
    # Two objects in one SparseTensor: upstream's own forward, unchanged.
    both = sparse_coords(30, 8, batches=2, seed=5)
    x2 = sp.SparseTensor(feats=torch.randn(len(both), 64, generator=g), coords=both)
    mod2, context2 = torch.randn(2, 64, generator=g), torch.randn(2, 5, 32, generator=g)
    got = run(x2, mod2, context2)
    remove_dense_blocks(blocks)
    assert torch.equal(got, run(x2, mod2, context2))


def test_tiny_slat_flow_model_gives_the_same_velocity_with_dense_blocks(monkeypatch):
    sp, _, SLatFlowModel = upstream_sparse()
    spconv = pytest.importorskip("spconv.pytorch")
    from tests.support.spconv_cpu import submanifold_conv_cpu

    monkeypatch.setattr(spconv.SubMConv3d, "forward", submanifold_conv_cpu)
    model = SLatFlowModel(resolution=16, in_channels=8, model_channels=64, cond_channels=32,
                          out_channels=8, num_blocks=2, num_heads=4, patch_size=2,
                          num_io_res_blocks=2, io_block_channels=[32], qk_rms_norm=True).eval()
    randomise(model, std=0.1)
    coords = sparse_coords(150, 16, seed=6)
    g = torch.Generator().manual_seed(7)
    x = sp.SparseTensor(feats=torch.randn(len(coords), 8, generator=g), coords=coords)
    t, cond = torch.tensor([300.0]), torch.randn(1, 6, 32, generator=g)
    with torch.no_grad():
        want = model(x, t, cond).feats
        assert install_dense_blocks(model.blocks) == 2
        got = model(x, t, cond).feats
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


class _Block(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(16, 16)

    def forward(self, h, t_emb, cond):
        return {k: v + torch.tanh(self.lin(v) + t_emb[:, None] + cond.mean(1, keepdim=True))
                for k, v in h.items()}


class _Backbone(torch.nn.Module):
    """Shaped like upstream's stage-1 flow model: `for block in self.blocks: h = block(...)`."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(_Block(i) for i in range(3))

    def forward(self, h, t_emb, cond):
        for block in self.blocks:
            h = block(h, t_emb, cond)
        return h


def test_graphed_trunk_off_cuda_is_the_block_loop():
    backbone = _Backbone().eval()
    h = {"shape": torch.randn(1, 10, 16), "pose": torch.randn(1, 2, 16)}
    t_emb, cond = torch.randn(1, 16), torch.randn(1, 4, 16)
    with torch.no_grad():
        want = backbone(h, t_emb, cond)
        blocks = list(backbone.blocks)
        trunk = install_graphed_trunk(backbone)
        assert install_graphed_trunk(backbone) is trunk and graphed_trunk(backbone) is trunk
        assert isinstance(backbone.blocks[0], GraphedTrunk) and len(backbone.blocks) == 1
        assert transformer_blocks(backbone) == blocks  # compilation still finds every block
        got = backbone(h, t_emb, cond)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert trunk.replays == 0 and not trunk._graphs  # nothing captured off CUDA


def test_apply_speed_settings_switches_levers_on_and_off():
    sp, Block, _ = upstream_sparse()
    app = types.SimpleNamespace(blocks=torch.nn.ModuleList(
        [Block(64, 32, num_heads=4).eval() for _ in range(2)]))
    geo = _Backbone()
    models = {"ss_generator": types.SimpleNamespace(reverse_fn=types.SimpleNamespace(backbone=geo)),
              "slat_generator": types.SimpleNamespace(reverse_fn=types.SimpleNamespace(backbone=app)),
              "ss_decoder": torch.nn.Linear(2, 2)}
    on = Sam3dSettings(dense_appearance=True, compile_appearance=True, geometry_cuda_graph=True,
                       compile_occupancy_decoder=True)
    # Without CUDA: no compilation, no graphs; the eager dense forward is still installed.
    assert apply_speed_settings(models, on, cuda=False) == 0
    assert all("forward" in b.__dict__ for b in app.blocks)
    assert graphed_trunk(geo) is None
    assert all(b._compiled_call_impl is None for b in geo.blocks)
    assert models["ss_decoder"]._compiled_call_impl is None
    off = Sam3dSettings(compile_appearance=False, geometry_cuda_graph=False)
    apply_speed_settings(models, off, cuda=False)
    assert not any("forward" in b.__dict__ for b in app.blocks)


# ---------------------------------------------------------------- on a GPU (marked; skipped without)

class _AttentionBlock(torch.nn.Module):
    """A stage-1-like block: modulated by t_emb, attends over its tokens and to cond."""

    def __init__(self, seed, width=128):
        super().__init__()
        torch.manual_seed(seed)
        self.qkv, self.out = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.mod = torch.nn.Linear(width, width)

    def forward(self, h, t_emb, cond):
        out = {}
        for k, v in h.items():
            q, kk, vv = self.qkv(v).chunk(3, dim=-1)
            kk, vv = torch.cat([kk, cond], 1), torch.cat([vv, cond], 1)
            a = torch.nn.functional.scaled_dot_product_attention(q[:, None], kk[:, None], vv[:, None])[:, 0]
            out[k] = v + self.out(a) * torch.tanh(self.mod(t_emb))[:, None]
        return out


@pytest.mark.gpu
def test_graphed_trunk_on_cuda_replays_what_the_blocks_compute():
    backbone = _Backbone().eval()
    backbone.blocks = torch.nn.ModuleList(_AttentionBlock(i) for i in range(3))
    backbone.cuda()
    g = torch.Generator(device="cuda").manual_seed(0)

    def inputs():
        return ({"shape": torch.randn(1, 512, 128, device="cuda", generator=g),
                 "pose": torch.randn(1, 4, 128, device="cuda", generator=g)},
                torch.randn(1, 128, device="cuda", generator=g),
                torch.randn(1, 64, 128, device="cuda", generator=g))

    calls = [inputs() for _ in range(4)]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        want = [backbone(*c) for c in calls]
        trunk = install_graphed_trunk(backbone)
        # A CFG step's two passes, twice: each replay's output must survive the next replay.
        got = [backbone(*c) for c in calls]
    assert trunk.captures == 1 and trunk.replays == 4
    for w, o in zip(want, got):
        for k in w:
            assert torch.allclose(o[k].float(), w[k].float(), atol=2e-3, rtol=2e-3)
    assert not torch.equal(got[0]["shape"], got[1]["shape"])


@pytest.mark.gpu
def test_compiled_dense_block_on_cuda_agrees_with_upstreams_block():
    sp, Block, _ = upstream_sparse()
    from sam3d_objects.model.backbone.tdfy_dit.modules.utils import convert_module_to_f16

    block = randomise(Block(256, 128, num_heads=4, qk_rms_norm=True).eval(), std=0.05).cuda()
    block.apply(convert_module_to_f16)
    g = torch.Generator(device="cuda").manual_seed(8)
    mod = torch.randn(1, 256, device="cuda", generator=g).half()
    context = torch.randn(1, 40, 128, device="cuda", generator=g).half()
    xs = [sp.SparseTensor(feats=torch.randn(len(c), 256, device="cuda", generator=g).half(),
                          coords=c.cuda()) for c in (sparse_coords(3000, 32, seed=9), sparse_coords(5000, 32, seed=10))]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        want = [block(x, mod, context).feats.float() for x in xs]
        install_dense_blocks([block], {"mode": "default"})
        got = [block(x, mod, context).feats.float() for x in xs]  # two token counts, one graph
    for w, o in zip(want, got):
        assert (o - w).abs().max() <= 1e-2 * w.abs().max()


def test_warm_up_that_fails_with_levers_on_switches_them_off_and_runs_again(monkeypatch, caplog):
    """A node where compilation fails (no compiler, an inductor bug) must not fail every
    request after a warm-up that only logged it: the levers go off and the warm-up reruns."""
    from deployments.reconstructor import sam3d_levers, sam3d_upstream

    applied = []
    monkeypatch.setattr(sam3d_levers, "apply_speed_settings",
                        lambda models, settings, cuda: applied.append(settings) or 0)
    model = sam3d_upstream.UpstreamModel.__new__(sam3d_upstream.UpstreamModel)
    model.settings, model.pipeline, model.torch = Sam3dSettings(), types.SimpleNamespace(models={}), torch
    model.compiled_blocks = 24
    calls = []

    class Run:
        def prepare(self):
            calls.append(model.settings.compile_appearance)
            if model.settings.compile_appearance:
                raise RuntimeError("inductor: no C compiler")

        def geometry_step(self):
            pass

        def geometry_preview(self):
            return types.SimpleNamespace(occupancy=np.zeros((4, 4, 4), bool))

        def release(self):
            calls.append("released")

    model.begin = lambda *a, **k: Run()
    with caplog.at_level("WARNING"):
        model.warm_up()
    assert calls == [True, "released", False, "released"]
    assert len(applied) == 1 and not any(getattr(applied[0], k) for k in sam3d_upstream.LEVERS_OFF)
    assert model.compiled_blocks == 0 and not model.settings.geometry_cuda_graph
    assert "no C compiler" in caplog.text and "incomplete" not in caplog.text
    # With every lever already off a failure is only logged: nothing to switch off.
    def out_of_memory(self):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(Run, "prepare", out_of_memory)
    model.settings = Sam3dSettings(**dict.fromkeys(sam3d_upstream.LEVERS_OFF, False))
    with caplog.at_level("WARNING"):
        model.warm_up()
    assert len(applied) == 1 and "SAM 3D warm-up incomplete: CUDA out of memory" in caplog.text


def test_warm_up_settles_pending_previews(monkeypatch, caplog):
    """With async_previews on, a run's previews are pending host copies: the warm-up settles
    them (as the frame thread does) and goes through every call, with the levers kept on.
    (On the H100 the unsettled preview failed the warm-up and switched every lever off.)"""
    from deployments.reconstructor import sam3d_upstream

    model = sam3d_upstream.UpstreamModel.__new__(sam3d_upstream.UpstreamModel)
    model.settings = Sam3dSettings(async_previews=True)
    model.pipeline, model.torch = types.SimpleNamespace(models={}), torch
    calls = []

    class Pending:
        def __init__(self, value):
            self.value = value

        def settle(self):
            calls.append("settled")
            return self.value

    class Run:
        def __getattr__(self, name):  # prepare, geometry_step, start_appearance, ...
            return lambda *a: calls.append(name)

        def geometry_preview(self):
            return Pending(types.SimpleNamespace(occupancy=np.ones((4, 4, 4), bool)))

        def appearance_preview(self):
            return Pending(types.SimpleNamespace(colors=np.zeros((64, 3), np.uint8)))

    model.begin = lambda *a, **k: Run()
    with caplog.at_level("WARNING"):
        model.warm_up()
    assert calls == ["prepare", "geometry_step", "settled", "start_appearance", "appearance_step",
                     "settled", "finish", "release"]
    assert not caplog.text and model.settings.compile_geometry
