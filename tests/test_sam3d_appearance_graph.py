"""`appearance_cuda_graph`: the appearance transformer's dense blocks behind one
`sam3d_graphs.DenseTrunk`. Off CUDA it is the block loop it replaces (dense or upstream's
forward); `apply_speed_settings` installs, disables and re-enables it; on a GPU (marked) the
first pass at a token count runs eagerly and is captured, later passes replay, a new token
count replaces the graph, and every output agrees with the blocks'. Needs upstream's sparse
modules (skips without them, as in CI)."""
from __future__ import annotations

import types

import pytest
import torch

from deployments.reconstructor.sam3d_dense import install_dense_blocks
from deployments.reconstructor.sam3d_graphs import DenseTrunk, dense_trunk, install_dense_trunk
from deployments.reconstructor.sam3d_levers import apply_speed_settings, transformer_blocks
from sam3d_common.settings import Sam3dSettings
from tests.support.sam3d_upstream import randomise, sparse_coords, upstream_sparse


def get_dummy_components(width=64, ctx=32, n_blocks=2, device="cpu"):
    sp, Block, _ = upstream_sparse()
    blocks = torch.nn.ModuleList(
        randomise(Block(width, ctx, num_heads=4, qk_rms_norm=True).eval(), std=0.05, seed=i)
        for i in range(n_blocks)).to(device)
    g = torch.Generator().manual_seed(1)
    mod = torch.randn(1, width, generator=g).to(device)
    context = torch.randn(1, 5, ctx, generator=g).to(device)

    def x(n, seed):
        coords = sparse_coords(n, 16, seed=seed)
        return sp.SparseTensor(feats=torch.randn(len(coords), width, generator=g).to(device),
                               coords=coords.to(device))

    return sp, types.SimpleNamespace(blocks=blocks), mod, context, x


def _loop(blocks, x, mod, context):
    for b in blocks:
        x = b(x, mod, context)
    return x.feats


def test_dense_trunk_off_cuda_is_the_block_loop():
    sp, backbone, mod, context, x = get_dummy_components()
    blocks = list(backbone.blocks)
    inputs = [x(60, 2), x(90, 3)]
    with torch.no_grad():
        upstream = [_loop(blocks, i, mod, context) for i in inputs]
        trunk = install_dense_trunk(backbone)  # no dense forwards yet: upstream's loop
        assert install_dense_trunk(backbone) is trunk and dense_trunk(backbone) is trunk
        assert [backbone.blocks[0](i, mod, context).feats for i in inputs][0].equal(upstream[0])
        install_dense_blocks(blocks)
        got = [backbone.blocks[0](i, mod, context).feats for i in inputs]
    assert all(torch.allclose(g, w, atol=1e-5, rtol=1e-5) for g, w in zip(got, upstream))
    assert trunk.replays == 0 and trunk.captures == 0 and not trunk._graphs


def test_apply_speed_settings_installs_and_switches_the_appearance_graph():
    sp, app, mod, context, x = get_dummy_components()
    blocks = list(app.blocks)
    geo = torch.nn.Module()
    geo.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    models = {"ss_generator": types.SimpleNamespace(reverse_fn=types.SimpleNamespace(backbone=geo)),
              "slat_generator": types.SimpleNamespace(reverse_fn=types.SimpleNamespace(backbone=app)),
              "ss_decoder": torch.nn.Linear(2, 2)}
    eager = dict(compile_geometry=False, geometry_cuda_graph=False, compile_appearance=False,
                 dense_appearance=True)
    apply_speed_settings(models, Sam3dSettings(**eager, appearance_cuda_graph=True), cuda=False)
    assert dense_trunk(app) is None  # a CUDA lever: nothing installed without CUDA
    apply_speed_settings(models, Sam3dSettings(**eager, appearance_cuda_graph=True), cuda=True)
    trunk = dense_trunk(app)
    assert isinstance(trunk, DenseTrunk) and trunk.enabled and list(trunk.blocks) == blocks
    assert all(callable(b.dense_fn) for b in blocks)
    trunk._graphs["stale"] = None
    apply_speed_settings(models, Sam3dSettings(**eager), cuda=True)
    assert dense_trunk(app) is trunk and not trunk.enabled and not trunk._graphs
    assert all(callable(b.dense_fn) for b in blocks)  # dense blocks still found through it
    apply_speed_settings(models, Sam3dSettings(**{**eager, "dense_appearance": False}), cuda=True)
    assert not any("dense_fn" in b.__dict__ or "forward" in b.__dict__ for b in blocks)
    with torch.no_grad():
        i = x(50, 4)
        assert torch.equal(app.blocks[0](i, mod, context).feats, _loop(blocks, i, mod, context))


@pytest.mark.gpu
def test_dense_trunk_on_cuda_captures_per_token_count_and_replays_the_blocks():
    sp, backbone, mod, context, x = get_dummy_components(width=128, ctx=64, device="cuda")
    blocks = list(backbone.blocks)
    install_dense_blocks(blocks, {"mode": "default"})
    first, second = [x(400, 5), x(400, 5)], [x(700, 6), x(700, 6)]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        want = [_loop(blocks, i, mod, context).clone() for i in first + second]
        trunk = install_dense_trunk(backbone)
        got = []
        for i in first + first + second + second:  # CFG-like: passes at one count, then another
            got.append(backbone.blocks[0](i, mod, context).feats)
    assert trunk.captures == 2 and trunk.replays == 6 and len(trunk._graphs) == 1
    for o, w in zip(got[:2] + got[4:6], want):
        assert torch.allclose(o.float(), w.float(), atol=2e-3, rtol=2e-3)
    assert torch.equal(got[0], got[2]) and not torch.equal(got[0], got[4])
