"""The SAM 3D speed levers on CPU: per-block compilation keeps the output, and the
latent→colour preview map refits on schedule and reproduces an affine colour map."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deployments.reconstructor.sam3d_levers import LatentColors, compile_blocks
from sam3d_common.settings import Sam3dSettings


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


def test_pending_previews_settled_later_give_what_settling_at_once_gives():
    """async_previews: the GPU worker queues each preview's host copy and goes on; the frame
    thread settles the previews later, in order. The latent→colour schedule is decided when a
    preview is made, so the colours are those of settling each preview at once."""
    from deployments.reconstructor.sam3d_grid import quaternion_to_matrix
    from deployments.reconstructor.sam3d_host import HostCopy, settle
    from deployments.reconstructor.sam3d_run import PendingAppearance, PendingGeometry

    g = np.random.default_rng(1)
    a, b = g.normal(size=(8, 3)) * 5, np.array([128.0, 100.0, 90.0])
    coords = np.zeros((300, 3), np.int64)

    def previews(fit):
        for _ in range(7):
            latent = torch.from_numpy(g.normal(size=(300, 8)).astype(np.float32))
            tensors = {"latent": latent}
            if fit.due():  # the decoder's colours: the affine map plus a little noise
                noisy = latent.double().numpy() @ a + b + g.normal(size=(300, 3))
                tensors["colors"] = torch.from_numpy(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
            yield PendingAppearance(coords, HostCopy(torch, tensors), fit)

    state = g.bit_generator.state
    at_once = [p.settle().colors for p in previews(LatentColors(refit_every=3))]
    g.bit_generator.state = state
    queued = list(previews(LatentColors(refit_every=3)))  # all made before any is settled
    later = [settle(p).colors for p in queued]
    assert all((x == y).all() for x, y in zip(at_once, later)) and len(later) == 7
    assert len({x.tobytes() for x in later}) == 7  # mapped and decoded colours both ran

    q = torch.tensor([0.9, 0.1, -0.3, 0.2])
    occ = torch.rand(8, 8, 8) > 0.5
    geo = settle(PendingGeometry(HostCopy(torch, {"occupancy": occ, "quaternion": q})))
    assert (geo.occupancy == occ.numpy()).all()
    assert np.allclose(geo.rotation, quaternion_to_matrix(q.numpy()))
    plain = settle(PendingGeometry(HostCopy(torch, {"occupancy": occ})))
    assert plain.rotation is None and settle(plain) is plain


def test_upstream_run_previews_pending_or_at_once_are_the_same():
    """UpstreamRun's previews with async_previews on are pending (the frame thread settles
    them) and settle to what the synchronous previews return. Upstream's decoders are stood in
    for by small torch functions; on the CPU the host copies are no-ops."""
    from types import SimpleNamespace

    from deployments.reconstructor.sam3d_host import settle
    from deployments.reconstructor.sam3d_run import (AppearancePreview, GeometryPreview, PendingAppearance,
                                                     PendingGeometry, UpstreamRun)

    gen = torch.Generator().manual_seed(0)
    shape = torch.randn(1, 4096, 8, generator=gen)
    quaternion = torch.tensor([[0.8, 0.2, -0.4, 0.4]])
    feats = torch.randn(1, 50, 8, generator=gen)
    gaussians = SimpleNamespace(get_features=torch.randn(50 * 4, 1, 3, generator=gen),
                                get_opacity=torch.rand(50 * 4, 1, generator=gen))
    pipeline = SimpleNamespace(
        shape_model_dtype=None, pose_decoder=lambda latents, **_: {"rotation": latents["quaternion"]},
        models={"ss_decoder": lambda v: v.sum(1, keepdim=True), "slat_decoder_gs": lambda slat: [gaussians]})

    def run(async_previews: bool, preview_colors: str):
        r = object.__new__(UpstreamRun)
        r.model, r.p = SimpleNamespace(torch=torch, settings=Sam3dSettings()), pipeline
        r.ss_input = {}
        r.geo = SimpleNamespace(x_hat={"shape": shape, "quaternion": quaternion})
        r.app = SimpleNamespace(x_hat=feats)
        r.coords = torch.zeros(50, 4, dtype=torch.int32)
        r.preview_coords = np.zeros((50, 3), np.int64)
        r.preview_dtype = torch.float32
        r.latent_colors = LatentColors(refit_every=2) if preview_colors == "latent" else None
        r.async_previews = async_previews
        r.side = None
        r._slat = lambda f: f
        return r

    for colors in ("latent", "decoder"):
        at_once, pending = run(False, colors), run(True, colors)
        for _ in range(3):
            g0, g1 = at_once.geometry_preview(), pending.geometry_preview()
            a0, a1 = at_once.appearance_preview(), pending.appearance_preview()
            assert isinstance(g0, GeometryPreview) and isinstance(g1, PendingGeometry)
            assert isinstance(a0, AppearancePreview) and isinstance(a1, PendingAppearance)
            g1, a1 = settle(g1), settle(a1)
            assert (g0.occupancy == g1.occupancy).all() and 0 < g0.occupancy.mean() < 1
            assert np.array_equal(g0.rotation, g1.rotation) and g0.rotation.shape == (3, 3)
            assert np.array_equal(a0.colors, a1.colors) and a0.colors.shape == (50, 3)


@pytest.mark.gpu
def test_previews_on_the_side_stream_equal_previews_on_the_worker_stream():
    """`preview_stream`: a geometry preview decoded on the side stream, while the worker's
    stream goes on with work that frees the preview's input and fills fresh memory (what the
    next step does), settles to the preview decoded on the worker's stream."""
    from types import SimpleNamespace

    from deployments.reconstructor.sam3d_host import settle
    from deployments.reconstructor.sam3d_run import UpstreamRun, preview_stream

    torch.manual_seed(0)
    decoder = torch.nn.Sequential(*[torch.nn.Conv3d(8 if i == 0 else 64, 64 if i < 5 else 1, 3, padding=1)
                                    for i in range(6)]).cuda()
    pipeline = SimpleNamespace(shape_model_dtype=torch.float16, models={"ss_decoder": decoder},
                               pose_decoder=lambda latents, **_: {"rotation": latents["quaternion"]})

    def run(side):
        r = object.__new__(UpstreamRun)
        r.model, r.p = SimpleNamespace(torch=torch, settings=Sam3dSettings()), pipeline
        r.device, r.ss_input, r.side, r.async_previews = "cuda", {}, side, side is not None
        return r

    on_worker, on_side = run(None), run(preview_stream(torch, "cuda"))
    for i in range(4):
        latent = {"shape": torch.randn(1, 4096, 8, device="cuda"),
                  "quaternion": torch.randn(1, 4, device="cuda")}
        on_worker.geo = SimpleNamespace(x_hat={k: v.clone() for k, v in latent.items()})
        expected = settle(on_worker.geometry_preview())
        on_side.geo = SimpleNamespace(x_hat=latent)
        pending = on_side.geometry_preview()
        del latent
        on_side.geo = None  # the input's last reference goes, as when the next step replaces it
        filler = [torch.full((1, 4096, 8), float(i + 7), device="cuda") for _ in range(64)]
        got = settle(pending)
        assert (got.occupancy == expected.occupancy).all() and 0 < got.occupancy.mean() < 1
        assert np.allclose(got.rotation, expected.rotation)
        del filler
