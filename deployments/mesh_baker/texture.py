"""Texture baking with permissively licensed code: the light mesh, UV-unwrapped, textured with
the full-resolution mesh's colours (``model_textured.glb``).

Upstream (SAM 3D Objects, after TRELLIS) bakes with nvdiffrast, whose licence forbids
commercial use; this module uses none of it. The steps:

1. UV-unwrap the decimated mesh with xatlas (MIT). Chart growing runs without its refinement
   iterations: 9× faster than its defaults at 200k faces (bench/bench_texture_bake.py).
2. Rasterise every triangle into the atlas in numpy (all triangles at once, in chunks): each
   texel whose centre a triangle covers gets that triangle's 3D point (barycentric).
3. Colour each texel with the nearest vertex of the FULL mesh (scipy cKDTree), so the texture
   carries the full mesh's colour detail onto the light one.
4. Fill the gutters: every uncovered texel takes its nearest covered texel's colour, so
   bilinear filtering and mipmaps never bleed black into the charts.
5. Write a GLB (positions, UVs, indices and a PNG base-colour texture) with trimesh.

Everything runs on the CPU: the GPU is free once the reconstructor has finished.
"""
from __future__ import annotations

import io

import numpy as np
import trimesh
import xatlas
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from ..reconstructor.base import MeshData

CHUNK = 4_000_000  # candidate texels per rasterisation chunk (bounds memory)


def unwrap(mesh: MeshData, size: int, padding: int = 2):
    """(vertex map into mesh.vertices, faces, uvs in [0,1]) of one xatlas atlas of size²."""
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(mesh.vertices, np.float32),
                   np.ascontiguousarray(mesh.faces, np.uint32))
    charts = xatlas.ChartOptions()
    charts.max_iterations = 0  # no chart refinement: most of xatlas' time, little gain here
    pack = xatlas.PackOptions()
    pack.resolution = size  # texels_per_unit 0: xatlas scales the charts to fill one atlas
    pack.padding = padding
    pack.bilinear = True
    atlas.generate(charts, pack)
    for _ in range(4):  # charts must share one atlas (one texture); shrink them until they do
        if atlas.atlas_count <= 1:
            break
        pack.texels_per_unit = atlas.texels_per_unit * 0.8
        atlas.generate(charts, pack)
    if atlas.atlas_count > 1:
        raise RuntimeError(f"xatlas spread the charts over {atlas.atlas_count} atlases")
    vmap, faces, uvs = atlas[0]
    return vmap, faces.astype(np.int64), uvs.astype(np.float64)


def rasterize(uv_px: np.ndarray, faces: np.ndarray, size: int):
    """Texels whose centres the triangles cover: (rows, cols, face ids, barycentrics (N,3)).

    ``uv_px``: per-vertex (x, y) in texel units, y down the image. Where triangles share a
    texel, one of them wins (they meet there, so their 3D points agree)."""
    tri = uv_px[faces]  # (F, 3, 2)
    lo = np.clip(np.floor(tri.min(axis=1) - 0.5).astype(np.int64), 0, size - 1)
    hi = np.clip(np.ceil(tri.max(axis=1) - 0.5).astype(np.int64), 0, size - 1)
    w, h = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    counts = w * h
    # Edge-function denominators; degenerate (zero-area) triangles cover nothing.
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    counts[np.abs(area) < 1e-12] = 0
    ends = np.cumsum(counts)
    out_r, out_c, out_f, out_b = [], [], [], []
    start = 0
    while start < len(faces):
        # Faces whose candidates fit this chunk (at least one face per chunk).
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + CHUNK, side="right")))
        f = np.repeat(np.arange(start, stop), counts[start:stop])
        k = np.arange(len(f)) - np.repeat(ends[start:stop] - counts[start:stop] - base, counts[start:stop])
        x = lo[f, 0] + k % w[f]
        y = lo[f, 1] + k // w[f]
        px, py = x + 0.5, y + 0.5
        fa, fb, fc, fd = a[f], b[f], c[f], area[f]
        l1 = ((px - fa[:, 0]) * (fc[:, 1] - fa[:, 1]) - (py - fa[:, 1]) * (fc[:, 0] - fa[:, 0])) / fd
        l2 = ((fb[:, 0] - fa[:, 0]) * (py - fa[:, 1]) - (fb[:, 1] - fa[:, 1]) * (px - fa[:, 0])) / fd
        l0 = 1.0 - l1 - l2
        eps = -1e-6
        inside = (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
        out_r.append(y[inside])
        out_c.append(x[inside])
        out_f.append(f[inside])
        out_b.append(np.stack([l0[inside], l1[inside], l2[inside]], axis=1))
        start = stop
    return (np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_f),
            np.concatenate(out_b) if out_b else np.zeros((0, 3)))


def bake_image(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, full: MeshData,
               size: int) -> np.ndarray:
    """(size, size, 3) uint8 texture: each covered texel the colour of the full mesh's vertex
    nearest its 3D point; gutters filled from the nearest covered texel."""
    uv_px = np.column_stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size])  # image rows go down
    rows, cols, fids, bary = rasterize(uv_px, faces, size)
    points = np.einsum("nk,nkd->nd", bary, vertices[faces[fids]].astype(np.float64))
    _, nearest = cKDTree(np.asarray(full.vertices, np.float64)).query(points, workers=-1)
    image = np.zeros((size, size, 3), np.uint8)
    image[rows, cols] = full.colors[nearest]
    empty = np.ones((size, size), bool)
    empty[rows, cols] = False
    if empty.all():
        return image
    idx = ndimage.distance_transform_edt(empty, return_distances=False, return_indices=True)
    return image[idx[0], idx[1]]


def bake_texture(decimated: MeshData, full: MeshData, size: int) -> bytes:
    """``model_textured.glb``: the decimated mesh with UVs and a size² PNG texture baked from
    the full mesh's vertex colours."""
    vmap, faces, uvs = unwrap(decimated, size)
    vertices = np.asarray(decimated.vertices, np.float32)[vmap]
    image = bake_image(vertices, faces, uvs, full, size)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.open(io.BytesIO(buf.getvalue())), metallicFactor=0.0,
        roughnessFactor=1.0, doubleSided=False)
    visual = trimesh.visual.TextureVisuals(uv=uvs.astype(np.float32), material=material)
    tm = trimesh.Trimesh(vertices=vertices, faces=faces, visual=visual, process=False)
    return tm.export(file_type="glb")
