"""Marching cubes on the final volume → vertex-coloured mesh preview, GLB and splat PLY.

Coordinates: the N^3 grid maps to the cube [-0.5, 0.5]^3, y up and +z towards the camera,
which is glTF's convention, so the GLB opens upright in any viewer.
"""
from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import trimesh
from scipy import ndimage
from skimage import measure

from sam3d_common.errors import BadInput
from sam3d_common.settings import MeshBakerSettings
from sam3d_common.store import ArtifactStore

from ..reconstructor.base import Reconstruction
from . import assets, texture
from .splat import splat_ply_bytes


@dataclass(frozen=True)
class BakeOptions:
    """Per-request bake choices (validated in the request schema)."""
    face_budget: int = 200_000  # faces in model.glb; the full mesh goes to model_full.glb
    texture: bool = False  # also bake model_textured.glb (decoded meshes only; see texture.py)
    texture_size: int = 2048  # its texture's width and height in texels


@dataclass
class BakeResult:
    preview: dict  # mesh_preview event fields
    artifacts: dict[str, int] = field(default_factory=dict)  # name -> size in bytes
    vertex_count: int = 0
    face_count: int = 0
    model: dict | None = None  # what the GLB holds (faces, Gaussians, posing), for the complete event


class _NearestColors:
    """Colour of the occupied voxel nearest each point (points in voxel index units).

    The nearest-voxel map is one distance transform, made once per bake and shared by the GLB
    and every coarser preview, over the object's bounding box grown by `MARGIN` voxels (every
    occupied voxel is inside it, so the map is the whole grid's there; the mesh's vertices lie
    within a voxel or two of the occupancy, and any point outside is clamped into the box). On
    the embedded 64³ grid the box is typically a third of the grid or less.
    """

    MARGIN = 3

    def __init__(self, recon: Reconstruction):
        occ = recon.occupancy
        used = [np.nonzero(occ.any(axis=tuple(a for a in range(3) if a != k)))[0] for k in range(3)]
        self.lo = np.array([max(int(u[0]) - self.MARGIN, 0) if len(u) else 0 for u in used])
        self.hi = np.array([min(int(u[-1]) + self.MARGIN, n - 1) if len(u) else n - 1
                            for u, n in zip(used, occ.shape)])
        box = tuple(slice(a, b + 1) for a, b in zip(self.lo, self.hi))
        _, self.idx = ndimage.distance_transform_edt(~occ[box], return_indices=True)
        self.colors = recon.colors[box]

    def __call__(self, points_vox: np.ndarray) -> np.ndarray:
        p = np.clip(np.rint(points_vox).astype(np.int64), self.lo, self.hi) - self.lo
        src = self.idx[:, p[:, 0], p[:, 1], p[:, 2]]
        return self.colors[src[0], src[1], src[2]]


def smoothed_volume(recon: Reconstruction, sigma: float) -> np.ndarray:
    """The occupancy as floats, padded so the surface closes at the grid's edge, smoothed."""
    vol = np.pad(recon.occupancy.astype(np.float32), 2)
    return ndimage.gaussian_filter(vol, sigma) if sigma > 0 else vol


def marching_cubes(vol: np.ndarray, step: int = 1):
    """(vertices in voxel units, faces) with outward winding, from a smoothed_volume."""
    verts, faces, _, _ = measure.marching_cubes(vol, level=0.5, step_size=step)
    verts = verts - 2.0
    # skimage orients faces towards increasing values (inwards here); flip to outwards.
    return verts, faces[:, ::-1].astype(np.uint32)


def to_unit_cube(verts_vox: np.ndarray, n: int) -> np.ndarray:
    return ((verts_vox + 0.5) / n - 0.5).astype(np.float32)


class MeshBakerBackend:
    bake_threads = 3  # threads of a decoded bake (1: one after another, as benchmarks compare)

    def __init__(self, settings: MeshBakerSettings, store: ArtifactStore):
        self.settings = settings
        self.store = store

    def bake(self, recon: Reconstruction, artifact_id: str,
             options: BakeOptions | None = None) -> BakeResult:
        options = options or BakeOptions()
        if recon.mesh is not None and len(recon.mesh.faces):
            return self._bake_decoded(recon, artifact_id, options)
        if not recon.occupancy.any():
            raise BadInput("the reconstruction is empty; nothing to mesh")
        n = recon.grid_size
        vol = smoothed_volume(recon, self.settings.smooth_sigma)
        color_at = _NearestColors(recon)
        verts, faces = marching_cubes(vol)
        colors = color_at(verts)
        mesh = trimesh.Trimesh(
            vertices=to_unit_cube(verts, n), faces=faces,
            vertex_colors=np.column_stack([colors, np.full(len(colors), 255, np.uint8)]),
            process=False,
        )
        glb = mesh.export(file_type="glb")
        sizes = {"model.glb": self.store.put(artifact_id, "model.glb", glb)}
        ply = splat_ply_bytes(recon, self.settings.splat_opacity)
        sizes["splat.ply"] = self.store.put(artifact_id, "splat.ply", ply)
        preview = self._preview(n, vol, color_at, verts, faces, colors)
        return BakeResult(preview=preview, artifacts=sizes,
                          vertex_count=len(verts), face_count=len(faces))

    def _bake_decoded(self, recon: Reconstruction, artifact_id: str,
                      options: BakeOptions) -> BakeResult:
        """The backend's own mesh and Gaussians, turned to the camera's view (see assets.py).

        Three independent jobs run on their own threads (numpy, meshoptimizer and file writes
        release the GIL for most of their time): the decimated meshopt GLB with the preview,
        the full plain GLB, and the splat PLY."""
        pose = recon.pose.as_dict() if recon.pose else None
        full = assets.posed_mesh(recon.mesh, recon.pose)

        def light():
            model = assets.decimate(full, options.face_budget)
            size = self.store.put(artifact_id, "model.glb",
                                  assets.meshopt_glb(model, {"pose": pose} if pose else None))
            small = assets.decimate(model, self.settings.max_preview_faces)
            return model, size, _preview_fields(small.vertices, small.faces, small.colors, step=1)

        def splats():
            if recon.gaussians is None:
                ply, count = splat_ply_bytes(recon, self.settings.splat_opacity), 0
            else:
                g = assets.posed_gaussians(recon.gaussians, recon.pose)
                ply, count = assets.gaussian_ply_bytes(g), len(g.xyz)
            return self.store.put(artifact_id, "splat.ply", ply), count

        with ThreadPoolExecutor(max_workers=self.bake_threads, thread_name_prefix="bake") as pool:
            light_job, splat_job = pool.submit(light), pool.submit(splats)
            full_job = pool.submit(lambda: self.store.put(artifact_id, "model_full.glb",
                                                          assets.plain_glb(full)))
            model, glb_size, preview = light_job.result()
            sizes = {"model.glb": glb_size, "model_full.glb": full_job.result()}
            sizes["splat.ply"], gaussian_count = splat_job.result()
        info = {"source": recon.backend or "decoded", "faces": int(len(model.faces)),
                "faces_full": int(len(full.faces)), "vertices": int(len(model.vertices)),
                "gaussians": gaussian_count, "compression": "EXT_meshopt_compression"}
        return BakeResult(preview=preview, artifacts=sizes, vertex_count=len(model.vertices),
                          face_count=len(model.faces), model=info)

    def bake_texture(self, recon: Reconstruction, artifact_id: str,
                     options: BakeOptions) -> int | None:
        """``model_textured.glb`` (size in bytes): model.glb's mesh UV-unwrapped, its texture
        baked from the full mesh's colours. None for reconstructions without a decoded mesh
        (the embedded backend's marching-cubes mesh has nothing finer to bake from)."""
        if recon.mesh is None or not len(recon.mesh.faces):
            return None
        full = assets.posed_mesh(recon.mesh, recon.pose)
        model = assets.decimate(full, options.face_budget)  # deterministic: model.glb's mesh
        glb = texture.bake_texture(model, full, options.texture_size)
        return self.store.put(artifact_id, "model_textured.glb", glb)

    def _preview(self, n, vol, color_at, verts, faces, colors) -> dict:
        """The seed's mesh_preview fields; coarser marching cubes when the mesh is large."""
        step = 1
        while len(faces) > self.settings.max_preview_faces and step < 8:
            step += 1
            verts, faces = marching_cubes(vol, step)
            colors = color_at(verts)
        return _preview_fields(to_unit_cube(verts, n), faces, colors, step)


def _preview_fields(v: np.ndarray, faces: np.ndarray, colors: np.ndarray, step: int) -> dict:
    """The seed's mesh_preview event fields (base64 little-endian arrays)."""
    v = np.asarray(v, np.float32)
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
