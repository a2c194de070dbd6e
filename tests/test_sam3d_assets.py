"""The mesh baker's path for decoded meshes and Gaussians (SAM 3D Objects' final output):
posing, decimation, the meshopt-compressed GLB read back by meshoptimizer's own decoder,
the 3DGS PLY, and the whole bake into a store."""
from __future__ import annotations

import json
import struct

import meshoptimizer
import io

import numpy as np
import pytest
import trimesh

from deployments.mesh_baker import assets
from deployments.mesh_baker.bake import BakeOptions, MeshBakerBackend
from deployments.reconstructor.base import GaussianData, MeshData, Pose, Reconstruction
from deployments.reconstructor.sam3d_grid import map_to_view, quaternion_to_matrix, view_from_local
from sam3d_common.settings import MeshBakerSettings
from sam3d_common.store import ArtifactStore

AID = "0123456789abcdef0123456789abcdef"
HALF = float(np.sqrt(0.5))
QUARTER_TURN_Y = Pose((HALF, 0.0, HALF, 0.0), (0.1, -0.2, 2.5), (1.7, 1.7, 1.7))


def sphere(subdivisions: int = 5) -> MeshData:
    ico = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.4)
    v = ico.vertices.astype(np.float32)
    colors = ((v - v.min(0)) / np.ptp(v, 0) * 255).astype(np.uint8)
    return MeshData(vertices=v, faces=ico.faces.astype(np.int32), colors=colors)


def read_glb(data: bytes) -> tuple[dict, bytes]:
    magic, version, total = struct.unpack_from("<III", data, 0)
    assert (magic, version, total) == (0x46546C67, 2, len(data))
    js_len, js_type = struct.unpack_from("<II", data, 12)
    assert js_type == 0x4E4F534A
    gltf = json.loads(data[20:20 + js_len])
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + js_len)
    assert bin_type == 0x004E4942
    return gltf, data[28 + js_len:28 + js_len + bin_len]


def canonical(faces: np.ndarray) -> np.ndarray:
    """Each triangle rotated to start at its smallest index (same winding)."""
    shift = np.argmin(faces, axis=1)
    return np.stack([np.roll(f, -k) for f, k in zip(faces, shift)])


def decode_meshopt_glb(data: bytes):
    """Positions, RGBA and indices out of our EXT_meshopt_compression GLB, by the spec."""
    gltf, binary = read_glb(data)
    assert gltf["extensionsRequired"] == ["EXT_meshopt_compression"]
    assert gltf["buffers"][1]["extensions"]["EXT_meshopt_compression"]["fallback"] is True
    out = []
    for view, (dtype, width) in zip(gltf["bufferViews"], [("<f4", 3), ("u1", 4), ("<u4", 1)]):
        ext = view["extensions"]["EXT_meshopt_compression"]
        chunk = np.frombuffer(binary[ext["byteOffset"]:ext["byteOffset"] + ext["byteLength"]], np.uint8)
        if ext["mode"] == "ATTRIBUTES":
            arr = meshoptimizer.decode_vertex_buffer(ext["count"], ext["byteStride"], chunk)
            arr = np.frombuffer(arr.tobytes(), dtype).reshape(ext["count"], width)
        else:
            arr = meshoptimizer.decode_index_buffer(ext["count"], ext["byteStride"], chunk)
            arr = np.frombuffer(arr.tobytes(), dtype).reshape(-1)
        assert arr.nbytes == view["byteLength"]
        out.append(arr)
    return gltf, out


def test_posed_points_follow_the_streamed_voxels_mapping():
    """A point of the mesh lands where map_to_view puts the voxel at the same local spot."""
    rot = view_from_local(quaternion_to_matrix(QUARTER_TURN_Y.rotation))
    p_local = np.array([[0.3, 0.0, 0.0]], np.float32)  # towards local +x
    mesh = MeshData(p_local, np.zeros((0, 3), np.int32), np.zeros((1, 3), np.uint8))
    posed = assets.posed_mesh(mesh, QUARTER_TURN_Y).vertices[0]
    # p_cam = s·p @ R + t = (0.1, -0.2, 2.5 + 0.51): +x turned away from the camera; then
    # glTF axes mirror x and z: the object sits 3 units in front of a camera looking along -z.
    assert np.allclose(posed, [-0.1, -0.2, -(2.5 + 1.7 * 0.3)], atol=1e-6)
    assert np.allclose(posed, rot @ (1.7 * p_local[0]) + [-0.1, -0.2, -2.5], atol=1e-6)
    occ = np.zeros((64,) * 3, bool)
    occ[24:40, 24:40, 24:40] = True  # a cube
    occ[40:56, 30:34, 30:34] = True  # an arm towards local +x
    view = np.argwhere(map_to_view(occ, rot, 64).occupancy)
    centre = view.mean(axis=0)
    assert view[:, 2].min() < centre[2] - 10  # the voxels' arm went the same way (-z)
    assert np.ptp(view[:, 0]) < np.ptp(view[:, 2])


def test_no_pose_uses_the_identity_pose_of_the_stream():
    mesh = MeshData(np.array([[0.3, 0.1, 0.2]], np.float32), np.zeros((0, 3), np.int32),
                    np.zeros((1, 3), np.uint8))
    assert np.allclose(assets.posed_mesh(mesh, None).vertices[0], [-0.3, 0.1, -0.2], atol=1e-6)


def test_gaussian_orientations_turn_with_their_centres():
    g = np.random.default_rng(0)
    q = g.normal(size=(5, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gs = GaussianData(xyz=g.normal(size=(5, 3)).astype(np.float32), f_dc=np.zeros((5, 3), np.float32),
                      opacity=np.zeros(5, np.float32), scale=np.full((5, 3), -3.0, np.float32),
                      rotation=q.astype(np.float32))
    posed = assets.posed_gaussians(gs, QUARTER_TURN_Y)
    a = assets.view_rotation(QUARTER_TURN_Y)
    assert np.allclose(posed.xyz, 1.7 * gs.xyz @ a.T + [-0.1, -0.2, -2.5], atol=1e-5)
    assert np.allclose(posed.scale, gs.scale + np.log(1.7), atol=1e-6)
    for before, after in zip(gs.rotation, posed.rotation):
        # The Gaussian's axes in the view = A · its axes in the local frame.
        assert np.allclose(quaternion_to_matrix(after), a @ quaternion_to_matrix(before), atol=1e-5)
    assert np.allclose(np.linalg.norm(posed.rotation, axis=1), 1, atol=1e-6)
    assert np.array_equal(posed.opacity, gs.opacity)
    mesh = MeshData(gs.xyz, np.zeros((0, 3), np.int32), np.zeros((5, 3), np.uint8))
    assert np.allclose(assets.posed_mesh(mesh, QUARTER_TURN_Y).vertices, posed.xyz, atol=1e-6)


@pytest.mark.parametrize("m", [np.eye(3), quaternion_to_matrix([0.1, 0.9, -0.3, 0.2]),
                               np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])])
def test_matrix_to_quaternion_round_trips(m):
    assert np.allclose(quaternion_to_matrix(assets.matrix_to_quaternion(m)), m, atol=1e-9)


def test_decimation_keeps_to_the_budget_and_the_shape():
    full = sphere(6)  # 81,920 faces
    small = assets.decimate(full, 5_000)
    assert 1_000 < len(small.faces) <= 5_000
    assert small.faces.max() == len(small.vertices) - 1  # unused vertices dropped
    radius = np.linalg.norm(small.vertices, axis=1)
    assert np.allclose(radius, 0.4, atol=0.01)  # still the sphere's surface
    same = assets.decimate(full, 100_000)
    assert len(same.faces) == len(full.faces)


def test_meshopt_glb_decodes_to_the_same_mesh():
    mesh = sphere(4)
    data = assets.meshopt_glb(mesh, extras={"pose": QUARTER_TURN_Y.as_dict()})
    gltf, (positions, rgba, indices) = decode_meshopt_glb(data)
    assert np.array_equal(positions, mesh.vertices)
    assert np.array_equal(rgba[:, :3], mesh.colors) and (rgba[:, 3] == 255).all()
    # The index codec may rotate a triangle's corners (winding kept): compare canonically.
    assert np.array_equal(canonical(indices.reshape(-1, 3)), canonical(mesh.faces))
    acc = gltf["accessors"][0]
    assert np.allclose(acc["min"], mesh.vertices.min(0)) and np.allclose(acc["max"], mesh.vertices.max(0))
    assert gltf["scenes"][0]["extras"]["pose"]["translation"] == [0.1, -0.2, 2.5]
    plain = assets.plain_glb(mesh)
    assert len(data) < 0.6 * len(plain)  # the point of compressing


def test_plain_glb_loads_as_the_same_mesh():
    mesh = sphere(3)
    loaded = trimesh.load(io.BytesIO(assets.plain_glb(mesh)), file_type="glb", force="mesh", process=False)
    assert np.array_equal(loaded.vertices.astype(np.float32), mesh.vertices)
    assert np.array_equal(loaded.faces, mesh.faces)
    assert np.array_equal(loaded.visual.vertex_colors[:, :3], mesh.colors)
    assert (loaded.visual.vertex_colors[:, 3] == 255).all()


def test_posed_gaussian_ply_rows_hold_the_posed_values():
    g = np.random.default_rng(2)
    n = 7
    q = g.normal(size=(n, 4)).astype(np.float32)
    gs = GaussianData(xyz=g.normal(size=(n, 3)).astype(np.float32), f_dc=g.normal(size=(n, 3)).astype(np.float32),
                      opacity=g.normal(size=n).astype(np.float32), scale=g.normal(size=(n, 3)).astype(np.float32),
                      rotation=q / np.linalg.norm(q, axis=1, keepdims=True))
    posed = assets.posed_gaussians(gs, QUARTER_TURN_Y)
    ply = bytes(assets.gaussian_ply_bytes(posed))
    body = ply[ply.index(b"end_header\n") + len(b"end_header\n"):]
    rows = np.frombuffer(body, "<f4").reshape(n, 17)
    assert np.array_equal(rows[:, 0:3], posed.xyz) and np.array_equal(rows[:, 13:17], posed.rotation)
    assert np.array_equal(rows[:, 6:9], gs.f_dc) and np.array_equal(rows[:, 9], gs.opacity)
    assert np.array_equal(rows[:, 10:13], posed.scale) and not rows[:, 3:6].any()


def test_bake_writes_decoded_assets_and_reports_them(tmp_path):
    mesh = sphere(6)
    n = 40
    g = np.random.default_rng(1)
    gauss = GaussianData(xyz=g.uniform(-0.4, 0.4, (n, 3)).astype(np.float32),
                         f_dc=g.normal(size=(n, 3)).astype(np.float32),
                         opacity=g.normal(size=n).astype(np.float32),
                         scale=np.full((n, 3), -4.0, np.float32),
                         rotation=np.tile(np.float32([1, 0, 0, 0]), (n, 1)))
    occ = np.zeros((16,) * 3, bool)
    occ[4:12, 4:12, 4:12] = True
    recon = Reconstruction(occupancy=occ, colors=np.zeros((16,) * 3 + (3,), np.uint8), backend="sam3d",
                           mesh=mesh, gaussians=gauss, pose=QUARTER_TURN_Y)
    store = ArtifactStore(str(tmp_path))
    baked = MeshBakerBackend(MeshBakerSettings(max_preview_faces=2_000), store).bake(
        recon, AID, BakeOptions(face_budget=10_000))
    assert set(baked.artifacts) == {"model.glb", "model_full.glb", "splat.ply"}
    assert baked.model["faces_full"] == 81_920 and baked.model["faces"] <= 10_000
    assert baked.model["gaussians"] == n
    assert baked.face_count == baked.model["faces"]
    full = trimesh.load(tmp_path / AID / "model_full.glb", force="mesh")
    assert len(full.faces) == 81_920
    _, (positions, _, indices) = decode_meshopt_glb((tmp_path / AID / "model.glb").read_bytes())
    assert len(indices) // 3 == baked.face_count
    ply = (tmp_path / AID / "splat.ply").read_bytes()
    body = np.frombuffer(ply[ply.index(b"end_header\n") + 11:], "<f4").reshape(n, 17)
    a = assets.view_rotation(QUARTER_TURN_Y)
    assert np.allclose(body[:, :3], 1.7 * gauss.xyz @ a.T + [-0.1, -0.2, -2.5], atol=1e-5)
    assert np.allclose(body[:, 6:9], gauss.f_dc)
    assert baked.preview["face_count"] <= 2_000 and baked.preview["vertex_count"] > 0
