"""The SAM 3D stream's geometry helpers (deployments/reconstructor/sam3d_grid.py): local-to-view
axes and pose rotation, resampling to another grid, surfaces, voxel colours from Gaussians, and
the per-run colour gather against the nearest-colour fill it replaced.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from deployments.reconstructor.sam3d_grid import (color_order, map_to_view, quaternion_to_matrix,
                                                  surface, view_from_local, voxel_colors)
from tests.support.sam3d_fake import M


def _one_voxel(i, j, k, m=M):
    occ = np.zeros((m,) * 3, bool)
    occ[i, j, k] = True
    return occ


def _only_voxel(mapping):
    idx = np.argwhere(mapping.occupancy)
    return idx.mean(axis=0)


def test_axes_identity_pose_mirrors_x_and_z():
    """Identity pose: local = PyTorch3D camera (x left, y up, z away) → view (x right, y up, z to us)."""
    occ = np.zeros((M,) * 3, bool)
    occ[24:40, 24:40, 24:40] = True  # a centred cube
    occ[40:56, 30:34, 30:34] = True  # an arm towards local +x
    occ[30:34, 40:60, 30:34] = True  # a taller arm towards local +y
    occ[30:34, 30:34, 40:48] = True  # a short arm towards local +z
    mapping = map_to_view(occ, view_from_local(None), M)
    view = mapping.occupancy
    assert view.sum() == occ.sum()  # the object fits: same scale, nothing lost
    # The object's centre is the bbox centre, so locate arms relative to the cube.
    cube_centre = np.argwhere(view).mean(axis=0)
    xs, ys, zs = (np.argwhere(view)[:, a] for a in range(3))
    assert xs.min() < cube_centre[0] - 10  # +x arm went to -x
    assert ys.max() > cube_centre[1] + 10  # +y arm stays up
    assert zs.min() < cube_centre[2] - 5  # +z (away from the camera) went to -z (away)


def test_pose_rotation_is_applied_as_a_row_vector_transform():
    # 90° about y; upstream applies p @ R, i.e. the column rotation R.T.
    half = np.sqrt(0.5)
    r = quaternion_to_matrix([half, 0.0, half, 0.0])
    assert np.allclose(r, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    p_local = np.array([1.0, 0.0, 0.0])
    assert np.allclose(p_local @ r, [0, 0, 1])  # local +x → camera +z (away)
    assert np.allclose(view_from_local(r) @ p_local, [0, 0, -1])  # → view -z
    occ = np.zeros((M,) * 3, bool)
    occ[20:44, 30:34, 30:34] = True  # a bar along local x
    view = map_to_view(occ, view_from_local(r), M).occupancy
    extent = np.ptp(np.argwhere(view), axis=0)
    assert extent[2] == 23 and extent[0] == 3  # now a bar along z


def test_oblique_rotation_has_no_holes_and_large_objects_shrink_to_fit():
    occ = np.ones((M,) * 3, bool)  # fills the local cube: rotated 45°, it cannot fit unscaled
    c, s = np.cos(np.pi / 8), np.sin(np.pi / 8)
    rot = view_from_local(quaternion_to_matrix([c, 0, s, 0]))  # 45° about y
    view = map_to_view(occ, rot, 32).occupancy
    idx = np.argwhere(view)
    assert idx[:, 0].min() == 0 and idx[:, 0].max() == 31  # shrunk to span the grid
    # A slab through the middle is a filled diamond: no holes inside its outline.
    from scipy import ndimage

    mid = view[:, 16, :]
    assert (ndimage.binary_fill_holes(mid) == mid).all()
    assert mid.sum() > 0.45 * 32 * 32


def test_resampling_to_another_grid_size_and_empty_input():
    occ = _one_voxel(0, 0, 0, m=4)
    occ[3, 3, 3] = True
    m8 = map_to_view(occ, np.eye(3), 8)
    assert m8.occupancy.sum() == 2 * 8  # each local voxel spans 2x2x2 view cells
    assert not map_to_view(np.zeros((4, 4, 4), bool), np.eye(3), 8).occupancy.any()
    values = np.arange(64).reshape(4, 4, 4)
    sampled = m8.sample(values, fill=-1)
    assert set(np.unique(sampled)) == {-1, 0, 63}


def test_surface_matches_the_26_neighbour_rule():
    occ = np.zeros((8, 8, 8), bool)
    occ[1:6, 1:6, 1:6] = True
    surf = surface(occ)
    assert surf.sum() == 5 ** 3 - 3 ** 3
    full = np.ones((4, 4, 4), bool)
    assert surface(full).sum() == 4 ** 3 - 2 ** 3  # outside the grid counts as empty


def test_voxel_colors_from_gaussians():
    c0 = 0.28209479177387814
    dc = np.zeros((2, 3, 3))
    dc[0] = (1.0 - 0.5) / c0  # all three Gaussians white
    dc[1, 0] = (np.array([1.0, 0.0, 0.0]) - 0.5) / c0  # red, opaque
    dc[1, 1] = (np.array([0.0, 0.0, 1.0]) - 0.5) / c0  # blue, transparent
    dc[1, 2] = (np.array([0.0, 0.0, 1.0]) - 0.5) / c0
    opacity = np.array([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    out = voxel_colors(dc, opacity)
    assert out.dtype == np.uint8
    assert out[0].tolist() == [255, 255, 255] and out[1].tolist() == [255, 0, 0]
    # all transparent: plain mean
    assert voxel_colors(dc[1:], np.zeros((1, 3)))[0].tolist() == [85, 0, 170]
    # torch tensors (the GPU path, reduced where they are) give the same colours
    import torch

    rng = np.random.default_rng(0)
    dc, opacity = rng.normal(0, 1.5, (500, 32, 3)), rng.uniform(0, 1, (500, 32)) ** 3
    opacity[:50] = 0.0
    want = voxel_colors(dc, opacity)
    got = voxel_colors(torch.from_numpy(dc).half(), torch.from_numpy(opacity).float())
    assert np.array_equal(voxel_colors(torch.from_numpy(dc), torch.from_numpy(opacity)), want)
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - want).max() <= 1  # fp16 input


def fill_colors(occ: np.ndarray, coords: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """The reference for color_order (how appearance frames were coloured before it): an
    (m, m, m, 3) uint8 volume with `colors` at `coords` and every other cell the colour of the
    nearest coloured voxel."""
    m = occ.shape[0]
    vol = np.zeros((m, m, m, 3), np.uint8)
    if len(coords) == 0:
        return vol
    have = np.zeros((m, m, m), bool)
    c = np.asarray(coords, dtype=np.int64)
    have[c[:, 0], c[:, 1], c[:, 2]] = True
    vol[c[:, 0], c[:, 1], c[:, 2]] = colors
    _, near = ndimage.distance_transform_edt(~have, return_indices=True)
    return vol[near[0], near[1], near[2]]


def test_fill_colors_reaches_interior_voxels():
    occ = np.zeros((6, 6, 6), bool)
    occ[1:5, 1:5, 1:5] = True
    coords = np.argwhere(surface(occ))
    colors = np.tile(np.array([[10, 20, 30]], np.uint8), (len(coords), 1))
    vol = fill_colors(occ, coords, colors)
    assert (vol[occ] == [10, 20, 30]).all()
    assert fill_colors(occ, np.zeros((0, 3), int), np.zeros((0, 3), np.uint8)).sum() == 0


def test_color_order_gives_what_fill_colors_then_sample_give():
    """The per-run gather the appearance frames use equals the per-frame nearest-colour fill
    followed by the view resampling, for any colours (random ones, rotated view, repeated coords)."""
    rng = np.random.default_rng(3)
    c = (np.arange(24) + 0.5) / 24 - 0.5
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    occ = (x / 0.4) ** 2 + (y / 0.3) ** 2 + (z / 0.35) ** 2 < 1
    coords = np.argwhere(surface(occ))
    coords = np.concatenate([coords, coords[:5]])  # a repeated voxel keeps its last colour
    mapping = map_to_view(occ, view_from_local(quaternion_to_matrix([0.9, 0.2, -0.3, 0.1])), 20)
    rows = color_order(24, coords, mapping.source)
    for _ in range(3):
        colors = rng.integers(0, 256, (len(coords), 3), dtype=np.uint8)
        want = mapping.sample(fill_colors(occ, coords, colors))
        got = np.zeros_like(want)
        got[mapping.source >= 0] = colors[rows]
        assert np.array_equal(got, want)

