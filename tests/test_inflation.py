import asyncio

import numpy as np
import pytest

from sam3d_common.errors import BadInput
from deployments.reconstructor.base import Reconstruction, ReconstructOptions, StepFrame
from deployments.reconstructor.base import shell
from deployments.reconstructor.inflation import InflationReconstructor
from sam3d_common.settings import InflationSettings


def disc(h=200, w=200, r=80):
    yy, xx = np.mgrid[:h, :w]
    return (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= r * r


def collect(recon, image, mask, **opts):
    async def go():
        return [item async for item in recon.stream(image, mask, ReconstructOptions(**opts))]
    return asyncio.run(go())


def test_disc_inflates_to_a_sphere():
    mask = disc()
    img = np.zeros(mask.shape + (3,), np.uint8)
    img[mask] = (200, 40, 30)
    items = collect(InflationReconstructor(InflationSettings(depth_scale=1.0), 64), img, mask)
    final = items[-1]
    assert isinstance(final, Reconstruction)
    occ = final.occupancy
    xs, ys, zs = np.nonzero(occ)
    width, height, depth = np.ptp(xs) + 1, np.ptp(ys) + 1, np.ptp(zs) + 1
    assert width == pytest.approx(0.9 * 64, abs=2) and height == pytest.approx(width, abs=1)
    # Poisson inflation of a disc is a sphere when depth_scale is 1 (within the solver's 5 %).
    assert depth == pytest.approx(width, rel=0.12)
    assert (final.colors[occ] == (200, 40, 30)).all()


def test_geometry_then_appearance_with_growing_volume():
    items = collect(InflationReconstructor(InflationSettings(geometry_steps=6, appearance_steps=4), 32),
                    np.full((100, 60, 3), 128, np.uint8), np.ones((100, 60), bool))
    frames = [i for i in items if isinstance(i, StepFrame)]
    assert [f.stage for f in frames] == ["geometry"] * 6 + ["appearance"] * 4
    assert all(f.frame.colors is None for f in frames[:6])
    assert all(f.frame.colors is not None for f in frames[6:])
    # Each geometry frame is the visible shell of a volume that grows as the solve converges.
    counts = [f.frame.count for f in frames[:6]]
    assert counts == sorted(counts) and counts[-1] > counts[0]
    occ = items[-1].occupancy
    assert (frames[-1].frame.to_occupancy() == shell(occ)).all()


def test_tall_mask_gives_tall_volume():
    mask = np.zeros((300, 300), bool)
    mask[20:280, 120:180] = True
    final = collect(InflationReconstructor(grid_size=64), np.zeros((300, 300, 3), np.uint8), mask)[-1]
    xs, ys, _ = np.nonzero(final.occupancy)
    assert (np.ptp(ys) + 1) / (np.ptp(xs) + 1) == pytest.approx(260 / 60, rel=0.1)


def test_cadence_keeps_the_last_step():
    items = collect(InflationReconstructor(InflationSettings(geometry_steps=7, appearance_steps=5), 16),
                    np.zeros((40, 40, 3), np.uint8), disc(40, 40, 15), geometry_every=3, colors_every=2)
    steps = [(i.stage, i.step) for i in items if isinstance(i, StepFrame)]
    assert steps == [("geometry", 3), ("geometry", 6), ("geometry", 7),
                     ("appearance", 2), ("appearance", 4), ("appearance", 5)]


def test_cancel_stops_at_the_next_step_boundary():
    recon = InflationReconstructor(InflationSettings(geometry_steps=50, appearance_steps=50,
                                                     min_step_s=0.02), 32)

    async def go():
        agen = recon.stream(np.zeros((50, 50, 3), np.uint8), disc(50, 50, 20), ReconstructOptions())
        task = asyncio.ensure_future(agen.__anext__())
        await task
        steps_at_cancel = recon.steps_run
        consumer = asyncio.ensure_future(agen.__anext__())
        await asyncio.sleep(0)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        await asyncio.sleep(0.2)
        return steps_at_cancel, recon.steps_run

    at_cancel, after = asyncio.run(go())
    assert after - at_cancel <= 1


def test_empty_mask_is_bad_input():
    with pytest.raises(BadInput):
        collect(InflationReconstructor(grid_size=16), np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), bool))


def test_frame_gate_thins_shown_steps_to_the_interval_keeping_first_and_last():
    from deployments.reconstructor.base import FrameGate

    now = [0.0]
    gate = FrameGate(every=1, min_interval_s=0.1, clock=lambda: now[0])
    shown = []
    for k in range(1, 11):  # a step every 40 ms
        if gate(k, 10):
            shown.append(k)
        now[0] += 0.04
    assert shown == [1, 4, 7, 10]
    every2 = FrameGate(every=2, min_interval_s=0.0, clock=lambda: 0.0)
    assert [k for k in range(1, 8) if every2(k, 7)] == [2, 4, 6, 7]
