"""SAM 3D Objects backend on CPU: the streaming logic (cadence, cancellation, release, errors,
frame building off the GPU thread) over the fake model of tests/support/sam3d_fake.py.

Nothing here says anything about SAM 3D Objects' output quality. The startup checks are in
test_sam3d_startup.py, the geometry helpers in test_sam3d_grid.py, the sampler against upstream
in test_sam3d_run.py.
"""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from sam3d_common.errors import BadInput, StageError
from deployments.reconstructor.base import ReconstructOptions, Reconstruction, StepFrame
from deployments.reconstructor.sam3d import Sam3dReconstructor
from sam3d_common.settings import Sam3dSettings
from tests.support.sam3d_fake import FakeModel, FakeRun, collect, photo


async def test_cadence_and_final_reconstruction():
    model = FakeModel()
    backend = Sam3dReconstructor(Sam3dSettings(geometry_steps=8, appearance_steps=6),
                                 grid_size=32, model=model)
    items = await collect(backend, ReconstructOptions(seed=5, geometry_every=3, colors_every=4))
    frames = [i for i in items if isinstance(i, StepFrame)]
    assert [(f.stage, f.step, f.total_steps) for f in frames] == [
        ("geometry", 3, 8), ("geometry", 6, 8), ("geometry", 8, 8),
        ("appearance", 4, 6), ("appearance", 6, 6)]
    assert isinstance(items[-1], Reconstruction) and len(items) == len(frames) + 1
    # Steps all run; previews (decoder passes) only where a frame is sent.
    assert model.calls.count("geometry_step") == 8 and model.calls.count("geometry_preview") == 3
    assert model.calls.count("appearance_step") == 6 and model.calls.count("appearance_preview") == 2
    assert model.calls[0] == "prepare" and model.calls[-2:] == ["finish", "release"]
    assert model.calls.count("release") == 1
    assert model.begun == [((48, 64, 3), 900, 5, 8, 6)]
    assert len(model.threads) == 1 and next(iter(model.threads)).startswith("sam3d-gpu")

    geo = [f.frame for f in frames if f.stage == "geometry"]
    assert all(f.grid_size == 32 and f.colors is None for f in geo)
    assert geo[0].count < geo[1].count < geo[2].count  # the fake's box grows
    app = [f.frame for f in frames if f.stage == "appearance"]
    assert all(f.colors is not None and f.count == geo[-1].count for f in app)
    assert app[0].colors[:, 0].max() == 255 * 4 // 6 and app[1].colors[:, 0].min() == 255

    recon = items[-1]
    assert recon.backend == "sam3d"
    assert len(recon.mesh.faces) == 4 and len(recon.gaussians.xyz) == 2
    assert recon.pose.translation == (0.0, 0.0, 2.0)
    assert recon.occupancy.shape == (32, 32, 32) and recon.occupancy.dtype == bool
    assert recon.colors.shape == (32, 32, 32, 3) and recon.colors.dtype == np.uint8
    assert (recon.colors[recon.occupancy][:, 0] == 255).all()  # every occupied voxel coloured
    assert (recon.colors[~recon.occupancy] == 0).all()


async def test_every_step_at_cadence_one_and_grid_64():
    model = FakeModel()
    backend = Sam3dReconstructor(Sam3dSettings(geometry_steps=3, appearance_steps=2),
                                 grid_size=64, model=model)
    items = await collect(backend)
    assert [(i.stage, i.step) for i in items[:-1]] == [
        ("geometry", 1), ("geometry", 2), ("geometry", 3), ("appearance", 1), ("appearance", 2)]
    recon = items[-1]
    assert recon.occupancy.shape == (64, 64, 64)
    # Identity pose and an object that fits: the final local box maps 1:1 onto the view grid.
    final_local = FakeRun(FakeModel(), 3, 2)
    final_local.geo_done = 3
    local_occ = final_local.geometry_preview().occupancy
    assert recon.occupancy.sum() == local_occ.sum()
    assert (np.ptp(np.argwhere(recon.occupancy), axis=0) == np.ptp(np.argwhere(local_occ), axis=0)).all()


async def test_cancel_after_first_frame_stops_at_the_step_boundary():
    model = FakeModel(step_s=0.05)
    backend = Sam3dReconstructor(Sam3dSettings(geometry_steps=20, appearance_steps=20),
                                 model=model)
    first = asyncio.Event()
    image, mask = photo()
    seen = []

    async def consume():
        async for item in backend.stream(image, mask, ReconstructOptions()):
            seen.append(model.calls.count("geometry_step"))
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.3)  # six step lengths: any runaway step would show up here
    steps = model.calls.count("geometry_step")
    steps_at_first_frame = seen[0]
    assert len(seen) == 1 and seen[0] <= 2  # step 2 is queued before frame 1 is sent
    assert steps <= steps_at_first_frame + 1, "at most the step in flight runs after cancel"
    assert model.calls.count("release") == 1
    release = model.calls.index("release")
    before = model.calls[:release]
    assert before.count("geometry_step") == before.count("geometry_step_end"), \
        "release waits for the running step to finish"
    assert "geometry_step" not in model.calls[release:]
    assert "start_appearance" not in model.calls


async def test_closing_the_stream_between_frames_releases():
    model = FakeModel()
    backend = Sam3dReconstructor(Sam3dSettings(geometry_steps=10, appearance_steps=10),
                                 model=model)
    image, mask = photo()
    agen = backend.stream(image, mask, ReconstructOptions())
    first = await agen.__anext__()
    assert first.stage == "geometry" and first.step == 1
    await agen.aclose()
    assert model.calls.count("geometry_step") <= 2  # frame 1 was built while step 2 ran
    assert model.calls[-1] == "release"


async def test_errors_release_and_empty_geometry_is_an_error():
    model = FakeModel(empty=True)
    backend = Sam3dReconstructor(Sam3dSettings(geometry_steps=2, appearance_steps=2), model=model)
    with pytest.raises(StageError, match="no voxels"):
        await collect(backend)
    assert model.calls[-1] == "release" and "start_appearance" not in model.calls

    model = FakeModel(fail_at="appearance_step")
    backend = Sam3dReconstructor(Sam3dSettings(geometry_steps=2, appearance_steps=2), model=model)
    with pytest.raises(RuntimeError, match="fake failure"):
        await collect(backend)
    assert model.calls[-1] == "release"


async def test_bad_masks_are_refused_before_any_model_work():
    model = FakeModel()
    backend = Sam3dReconstructor(Sam3dSettings(), model=model)
    image, mask = photo()
    with pytest.raises(BadInput, match="empty"):
        [i async for i in backend.stream(image, np.zeros_like(mask), ReconstructOptions())]
    with pytest.raises(BadInput, match="do not match"):
        [i async for i in backend.stream(image, mask[:10], ReconstructOptions())]
    assert model.calls == [] and model.begun == []


async def test_frames_are_built_off_the_gpu_thread_while_the_next_step_runs():
    model = FakeModel(step_s=0.02)
    backend = Sam3dReconstructor(Sam3dSettings(geometry_steps=4, appearance_steps=3), model=model)
    built = []
    real = backend._geometry_frame

    def geometry_frame(preview):
        built.append((threading.current_thread().name, model.calls.count("geometry_step")))
        return real(preview)

    backend._geometry_frame = geometry_frame
    items = await collect(backend)
    assert [(i.stage, i.step) for i in items[:-1]] == [
        ("geometry", 1), ("geometry", 2), ("geometry", 3), ("geometry", 4),
        ("appearance", 1), ("appearance", 2), ("appearance", 3)]
    assert len(built) == 4 and all(name.startswith("sam3d-frames") for name, _ in built)
