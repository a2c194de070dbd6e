"""Marching cubes on the final volume → vertex-coloured mesh preview, GLB and splat PLY.

Coordinates: the N^3 grid maps to the cube [-0.5, 0.5]^3, y up and +z towards the camera,
which is glTF's convention, so the GLB opens upright in any viewer.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np
import trimesh
from scipy import ndimage
from skimage import measure

from deployments.errors import BadInput
from serve_app.settings import MeshBakerSettings
from serve_app.store import ArtifactStore

from ..reconstructor.base import Reconstruction
from .splat import splat_ply_bytes


@dataclass
class BakeResult:
    preview: dict  # mesh_preview event fields
    artifacts: dict[str, int] = field(default_factory=dict)  # name -> size in bytes
    vertex_count: int = 0
    face_count: int = 0


def _nearest_colors(recon: Reconstruction, points_vox: np.ndarray) -> np.ndarray:
    """Colour of the occupied voxel nearest each point (points in voxel index units)."""
    occ = recon.occupancy
    _, idx = ndimage.distance_transform_edt(~occ, return_indices=True)
    n = occ.shape[0]
    p = np.clip(np.rint(points_vox).astype(np.int64), 0, n - 1)
    src = idx[:, p[:, 0], p[:, 1], p[:, 2]]
    return recon.colors[src[0], src[1], src[2]]


def marching_cubes(recon: Reconstruction, sigma: float, step: int = 1):
    """(vertices in voxel units, faces) with outward winding."""
    vol = np.pad(recon.occupancy.astype(np.float32), 2)
    if sigma > 0:
        vol = ndimage.gaussian_filter(vol, sigma)
    verts, faces, _, _ = measure.marching_cubes(vol, level=0.5, step_size=step)
    verts = verts - 2.0
    # skimage orients faces towards increasing values (inwards here); flip to outwards.
    return verts, faces[:, ::-1].astype(np.uint32)


def to_unit_cube(verts_vox: np.ndarray, n: int) -> np.ndarray:
    return ((verts_vox + 0.5) / n - 0.5).astype(np.float32)


class MeshBakerBackend:
    def __init__(self, settings: MeshBakerSettings, store: ArtifactStore):
        self.settings = settings
        self.store = store

    def bake(self, recon: Reconstruction, artifact_id: str) -> BakeResult:
        if not recon.occupancy.any():
            raise BadInput("the reconstruction is empty; nothing to mesh")
        n = recon.grid_size
        verts, faces = marching_cubes(recon, self.settings.smooth_sigma)
        colors = _nearest_colors(recon, verts)
        mesh = trimesh.Trimesh(
            vertices=to_unit_cube(verts, n), faces=faces,
            vertex_colors=np.column_stack([colors, np.full(len(colors), 255, np.uint8)]),
            process=False,
        )
        glb = mesh.export(file_type="glb")
        sizes = {"model.glb": self.store.put(artifact_id, "model.glb", glb)}
        ply = splat_ply_bytes(recon, self.settings.splat_opacity)
        sizes["splat.ply"] = self.store.put(artifact_id, "splat.ply", ply)
        preview = self._preview(recon, verts, faces, colors)
        return BakeResult(preview=preview, artifacts=sizes,
                          vertex_count=len(verts), face_count=len(faces))

    def _preview(self, recon, verts, faces, colors) -> dict:
        """The seed's mesh_preview fields; coarser marching cubes when the mesh is large."""
        n = recon.grid_size
        step = 1
        while len(faces) > self.settings.max_preview_faces and step < 8:
            step += 1
            verts, faces = marching_cubes(recon, self.settings.smooth_sigma, step)
            colors = _nearest_colors(recon, verts)
        v = to_unit_cube(verts, n)
        return {
            "vertices_data": base64.b64encode(v.tobytes()).decode("ascii"),
            "faces_data": base64.b64encode(faces.astype("<u4").tobytes()).decode("ascii"),
            "vertex_colors_data": base64.b64encode(colors.astype(np.uint8).tobytes()).decode("ascii"),
            "vertex_count": int(len(v)),
            "face_count": int(len(faces)),
            "bounds_min": v.min(axis=0).tolist(),
            "bounds_max": v.max(axis=0).tolist(),
            "preview_step": step,
        }
