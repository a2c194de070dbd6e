import io

import numpy as np
import pytest
import trimesh

from sam3d_common.errors import BadInput
from deployments.mesh_baker.bake import MeshBakerBackend
from deployments.mesh_baker.splat import PROPERTIES, SH_C0
from deployments.reconstructor.base import Reconstruction
from sam3d_common.settings import MeshBakerSettings
from sam3d_common.store import ArtifactStore, new_artifact_id


def box_recon(n=32):
    occ = np.zeros((n, n, n), bool)
    occ[8:24, 4:28, 12:20] = True  # 16 wide, 24 tall, 8 deep
    colors = np.zeros((n, n, n, 3), np.uint8)
    colors[..., 0] = 250
    colors[:, 16:, :, 1] = 200  # the upper half is yellow-ish
    return Reconstruction(occ, colors)


@pytest.fixture
def baked(tmp_path):
    store = ArtifactStore(str(tmp_path))
    aid = new_artifact_id()
    res = MeshBakerBackend(MeshBakerSettings(smooth_sigma=0.0), store).bake(box_recon(), aid)
    return store, aid, res


def test_glb_is_a_closed_coloured_mesh_of_the_right_size(baked):
    store, aid, res = baked
    mesh = next(iter(trimesh.load(io.BytesIO(store.get(aid, "model.glb")), file_type="glb").geometry.values()))
    assert mesh.is_watertight and mesh.volume > 0  # outward faces
    ext = mesh.extents * 32
    assert ext == pytest.approx([16, 24, 8], abs=1.5)
    cols = mesh.visual.vertex_colors[:, :3].astype(int)
    top = mesh.vertices[:, 1] > 0.1
    assert cols[top, 1].mean() > 150 and cols[~top & (mesh.vertices[:, 1] < -0.1), 1].mean() < 50
    assert res.artifacts["model.glb"] == len(store.get(aid, "model.glb"))


def test_preview_matches_seed_layout(baked):
    import base64
    _, _, res = baked
    p = res.preview
    v = np.frombuffer(base64.b64decode(p["vertices_data"]), "<f4").reshape(-1, 3)
    f = np.frombuffer(base64.b64decode(p["faces_data"]), "<u4").reshape(-1, 3)
    c = np.frombuffer(base64.b64decode(p["vertex_colors_data"]), np.uint8).reshape(-1, 3)
    assert len(v) == p["vertex_count"] == len(c) and len(f) == p["face_count"]
    assert f.max() < len(v)


def test_preview_is_coarsened_when_too_large(tmp_path):
    store = ArtifactStore(str(tmp_path))
    res = MeshBakerBackend(MeshBakerSettings(max_preview_faces=1000), store).bake(box_recon(), new_artifact_id())
    assert res.preview["face_count"] <= 1000 < res.face_count and res.preview["preview_step"] > 1


def test_splat_ply_has_one_gaussian_per_surface_voxel(baked):
    store, aid, _ = baked
    data = store.get(aid, "splat.ply")
    header, body = data.split(b"end_header\n", 1)
    lines = header.decode().splitlines()
    count = int(next(l for l in lines if l.startswith("element vertex")).split()[-1])
    props = [l.split()[-1] for l in lines if l.startswith("property")]
    assert props == list(PROPERTIES)
    rows = np.frombuffer(body, "<f4").reshape(count, len(props))
    box = box_recon().occupancy
    interior = box[9:23, 5:27, 13:19].sum()
    assert count == box.sum() - interior
    rgb = rows[:, 6:9] * SH_C0 + 0.5
    assert rgb[:, 0] == pytest.approx(250 / 255, abs=1e-3)


def test_empty_volume_is_bad_input(tmp_path):
    r = Reconstruction(np.zeros((8, 8, 8), bool), np.zeros((8, 8, 8, 3), np.uint8))
    with pytest.raises(BadInput):
        MeshBakerBackend(MeshBakerSettings(), ArtifactStore(str(tmp_path))).bake(r, new_artifact_id())


def test_nearest_colours_over_the_objects_box_equal_the_whole_grids():
    """The nearest-voxel map is built over the object's box only; every point a mesh can have
    (anywhere in the grid, clamped) gets the colour of the nearest occupied voxel, as a
    distance transform over the whole grid gives it."""
    from scipy import ndimage

    from deployments.mesh_baker.bake import _NearestColors

    g = np.random.default_rng(3)
    occ = np.zeros((48,) * 3, bool)
    occ[10:30, 14:20, 20:41] = True
    occ[25:28, 5:14, 30:33] = True  # an arm, so the box is not a cube
    colors = g.integers(0, 256, (48,) * 3 + (3,), dtype=np.uint8)
    nearest = _NearestColors(Reconstruction(occupancy=occ, colors=colors))
    assert (nearest.hi - nearest.lo + 1).prod() < 0.3 * occ.size  # a third of the grid or less
    _, idx = ndimage.distance_transform_edt(~occ, return_indices=True)
    lo, hi = nearest.lo, nearest.hi
    pts = np.argwhere(np.ones((48,) * 3, bool))
    inside = np.all((pts >= lo) & (pts <= hi), axis=1)
    p = pts[inside]
    src = idx[:, p[:, 0], p[:, 1], p[:, 2]]
    want = colors[src[0], src[1], src[2]]
    assert np.array_equal(nearest(pts[inside].astype(float)), want)
    # Off-grid and outside-the-box points are clamped to an occupied voxel's colour.
    far = nearest(np.array([[-5.0, 60.0, 0.0], [47.0, 47.0, 47.0]]))
    assert all(any((colors[occ] == c).all(axis=1)) for c in far)
