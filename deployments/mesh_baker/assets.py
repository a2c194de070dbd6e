"""Final assets of a backend that decodes its own mesh and Gaussians (SAM 3D Objects).

The model decodes in its object-local frame (unit cube). The assets are posed as the model
placed the object in front of the camera (p_cam = s · p @ R(q) + t, PyTorch3D's convention)
and written in glTF's axes (y up, the camera at the origin looking along -z), so an object and
its photo line up and several objects of one photo share a scene. The pose itself goes to the
complete event and the GLB's scene extras. Without a pose the identity pose applies (the same
mapping as the streamed voxel frames).

- ``model_full.glb``: every decoded face, vertex colours (plain glTF).
- ``model.glb``: at most ``face_budget`` faces (meshoptimizer's sloppy simplifier, which keeps
  the silhouette and costs well under a second for millions of faces), vertex-compressed with
  EXT_meshopt_compression (three.js, Babylon.js, gltfpack and Blender read it).
- ``splat.ply``: every decoded Gaussian in the 3D Gaussian Splatting layout, rotated the same way.
"""
from __future__ import annotations

import json
import struct

import meshoptimizer
import numpy as np

from ..reconstructor.base import GaussianData, MeshData, Pose
from ..reconstructor.sam3d_grid import CAMERA_TO_VIEW, quaternion_to_matrix, view_from_local
from .splat import ply_buffer


def matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
    """Unit wxyz quaternion of a rotation matrix (column-vector convention), w ≥ 0."""
    m = np.asarray(m, np.float64)
    t = np.trace(m)
    if t > 0:
        s = 2.0 * np.sqrt(1.0 + t)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.asarray(q)
    q = q / np.linalg.norm(q)
    return -q if q[0] < 0 else q


def view_rotation(pose: Pose | None) -> np.ndarray:
    """Rotation (column convention) from object-local axes to glTF axes as the camera saw them:
    the mapping the streamed voxel frames use."""
    return view_from_local(None if pose is None else quaternion_to_matrix(pose.rotation))


def _placement(pose: Pose | None) -> tuple[np.ndarray, np.ndarray, float]:
    """(A, b, s): p_view = A @ p_local + b, with A = view rotation · scale; s the mean scale."""
    rot = view_rotation(pose)
    if pose is None:
        return rot, np.zeros(3), 1.0
    scale = np.asarray(pose.scale, np.float64)
    return rot * scale[None, :], np.diag(CAMERA_TO_VIEW) * np.asarray(pose.translation), float(
        np.exp(np.log(scale).mean()))


def posed_mesh(mesh: MeshData, pose: Pose | None) -> MeshData:
    a, b, _ = _placement(pose)
    v = (mesh.vertices.astype(np.float64) @ a.T + b).astype(np.float32)
    return MeshData(vertices=v, faces=mesh.faces, colors=mesh.colors)


def posed_gaussians(g: GaussianData, pose: Pose | None) -> GaussianData:
    """Centres posed like the mesh; orientations turned; sizes times the (uniform) scale.

    Works in float32 (the decoder's precision) on the ~1M Gaussians of an object: the turn of
    every orientation is one 4x4 matrix (left multiplication by the view's quaternion)."""
    a, b, s = _placement(pose)
    w, x, y, z = matrix_to_quaternion(view_rotation(pose))
    left = np.array([[w, -x, -y, -z], [x, w, -z, y], [y, z, w, -x], [z, -y, x, w]], np.float32)
    q = g.rotation.astype(np.float32, copy=False) @ left.T
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    xyz = g.xyz.astype(np.float32, copy=False) @ a.T.astype(np.float32) + b.astype(np.float32)
    return GaussianData(xyz=xyz, f_dc=g.f_dc, opacity=g.opacity,
                        scale=(g.scale + np.float32(np.log(s))).astype(np.float32), rotation=q)


def decimate(mesh: MeshData, face_budget: int) -> MeshData:
    """At most ``face_budget`` faces; unused vertices dropped. Unchanged when under budget."""
    faces = np.ascontiguousarray(mesh.faces, dtype=np.uint32)
    if len(faces) > face_budget:
        positions = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
        out = np.empty(faces.size, np.uint32)
        n = meshoptimizer.simplify_sloppy(out, faces.reshape(-1), positions,
                                          target_index_count=face_budget * 3, target_error=1.0)
        faces = out[:n].reshape(-1, 3)
    used, inverse = np.unique(faces.reshape(-1), return_inverse=True)
    return MeshData(vertices=mesh.vertices[used], faces=inverse.reshape(-1, 3).astype(np.uint32),
                    colors=mesh.colors[used])


def plain_glb(mesh: MeshData) -> bytearray:
    """Every face as plain glTF: float32 positions, RGBA8 colours, uint32 indices.

    Written directly (three buffer views in one binary chunk): a mesh of ~2M faces is ~40 MB,
    which trimesh's exporter took ~0.35 s to assemble."""
    positions, rgba, indices = _mesh_arrays(mesh)
    chunks, views, offset = [], [], 0
    for arr, target in ((positions, 34962), (rgba, 34962), (indices, 34963)):
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": arr.nbytes, "target": target})
        chunks.append(arr)
        offset += arr.nbytes + (-arr.nbytes % 4)
    gltf = _mesh_gltf(positions, len(indices), buffers=[{"byteLength": offset}], views=views)
    return _glb(gltf, chunks, offset)


def _mesh_arrays(mesh: MeshData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The arrays both GLB writers store: little-endian float32 positions (V, 3), opaque RGBA8
    colours (V, 4) and uint32 triangle indices, flat."""
    rgba = np.empty((len(mesh.colors), 4), np.uint8)
    rgba[:, :3] = mesh.colors
    rgba[:, 3] = 255
    return (np.ascontiguousarray(mesh.vertices, dtype="<f4"), rgba,
            np.ascontiguousarray(mesh.faces.reshape(-1), dtype="<u4"))


def _mesh_gltf(positions: np.ndarray, index_count: int, buffers: list, views: list,
               extras: dict | None = None) -> dict:
    """The glTF JSON of one coloured triangle mesh: POSITION (float32), COLOR_0 (RGBA8) and
    uint32 indices in buffer views 0, 1, 2."""
    return {
        "asset": {"version": "2.0", "generator": "sam3d-serve"},
        "buffers": buffers,
        "bufferViews": views,
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": len(positions), "type": "VEC3",
             **_bounds(positions)},
            {"bufferView": 1, "componentType": 5121, "normalized": True, "count": len(positions), "type": "VEC4"},
            {"bufferView": 2, "componentType": 5125, "count": index_count, "type": "SCALAR"},
        ],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "indices": 2, "mode": 4}]}],
        "nodes": [{"mesh": 0, "name": "object"}],
        "scenes": [{"nodes": [0], **({"extras": extras} if extras else {})}],
        "scene": 0,
    }


def _bounds(positions: np.ndarray) -> dict:
    """The POSITION accessor's min and max (glTF requires them), column by column: numpy's
    axis-0 reduction over (N, 3) rows is ~20x slower than three strided column reductions."""
    if not len(positions):
        return {"min": [0.0] * 3, "max": [0.0] * 3}
    cols = [positions[:, k] for k in range(3)]
    return {"min": [float(c.min()) for c in cols], "max": [float(c.max()) for c in cols]}


def _glb(gltf: dict, chunks: list, bin_len: int) -> bytearray:
    """The GLB container: header, JSON chunk, then the binary chunk of ``chunks`` (each padded
    to 4 bytes, ``bin_len`` bytes in all), assembled with one copy of the data (a bytearray:
    the store writes it as it is)."""
    js = _pad4(json.dumps(gltf, separators=(",", ":")).encode("utf-8"), b" ")
    head = (struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(js) + 8 + bin_len)
            + struct.pack("<II", len(js), 0x4E4F534A) + js + struct.pack("<II", bin_len, 0x004E4942))
    out = bytearray(len(head) + bin_len)
    out[:len(head)] = head
    at = len(head)
    for c in chunks:  # contiguous arrays or bytes, viewed as bytes
        data = memoryview(c).cast("B")
        out[at:at + data.nbytes] = data
        at += data.nbytes + (-data.nbytes % 4)
    return out


def _pad4(b: bytes, fill: bytes = b"\0") -> bytes:
    return b + fill * (-len(b) % 4)


def meshopt_glb(mesh: MeshData, extras: dict | None = None) -> bytearray:
    """A GLB whose buffers are EXT_meshopt_compression streams (required extension).

    Positions float32 (stride 12) and RGBA8 colours (stride 4) as ATTRIBUTES streams, uint32
    indices as a TRIANGLES stream; the fallback buffer holds no data, as the extension allows.
    """
    positions, rgba, indices = _mesh_arrays(mesh)
    meshoptimizer.encode_vertex_version(0)  # the version EXT_meshopt_compression specifies
    streams = [
        (meshoptimizer.encode_vertex_buffer(positions), 12, len(positions), "ATTRIBUTES", positions.nbytes),
        (meshoptimizer.encode_vertex_buffer(rgba), 4, len(rgba), "ATTRIBUTES", rgba.nbytes),
        (meshoptimizer.encode_index_buffer(indices, len(indices), len(positions)), 4, len(indices),
         "TRIANGLES", indices.nbytes),
    ]
    packed, views, raw_offset = b"", [], 0
    for data, stride, count, mode, raw_len in streams:
        ext = {"buffer": 0, "byteOffset": len(packed), "byteLength": len(data),
               "byteStride": stride, "count": count, "mode": mode}
        view = {"buffer": 1, "byteOffset": raw_offset, "byteLength": raw_len,
                "extensions": {"EXT_meshopt_compression": ext}}
        if mode == "ATTRIBUTES":
            view["byteStride"] = stride
        views.append(view)
        packed += _pad4(data)
        raw_offset += raw_len + (-raw_len % 4)
    gltf = _mesh_gltf(positions, len(indices), buffers=[
        {"byteLength": len(packed)},
        {"byteLength": raw_offset, "extensions": {"EXT_meshopt_compression": {"fallback": True}}}],
        views=views, extras=extras)
    gltf["extensionsUsed"] = gltf["extensionsRequired"] = ["EXT_meshopt_compression"]
    return _glb(gltf, [packed], len(packed))


def gaussian_ply_bytes(g: GaussianData) -> bytearray:
    """The 3DGS PLY layout of splat.py, one row per decoded Gaussian."""
    ply, data = ply_buffer(len(g.xyz))
    data[:, 0:3] = g.xyz
    data[:, 6:9] = g.f_dc
    data[:, 9] = g.opacity
    data[:, 10:13] = g.scale
    data[:, 13:17] = g.rotation
    return ply
