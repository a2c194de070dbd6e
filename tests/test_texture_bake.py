"""The optional texture bake (deployments/mesh_baker/texture.py): the light mesh, UV-unwrapped
with xatlas, textured with the full mesh's colours; requested per request, announced by
`texture_ready` before `complete`, ignored by the embedded backend."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from deployments.mesh_baker import assets
from deployments.mesh_baker.texture import bake_texture, rasterize
from deployments.reconstructor.base import MeshData, Reconstruction
from photos import photo_bytes
from serve_app.local import LocalClients
from test_routes import events_of, make_client

SIZE = 512


def patterned_sphere(subdivisions: int = 6) -> MeshData:
    """An icosphere whose colours vary faster than the decimated mesh's vertices can hold."""
    ico = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.4)
    v = ico.vertices.astype(np.float32)
    colors = (40 + (np.sin(v * 60.0) + 1.0) * 100).astype(np.uint8)  # never black
    return MeshData(vertices=v, faces=ico.faces.astype(np.int32), colors=colors)


def load_textured(glb: bytes):
    mesh = trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh")
    image = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    return mesh, image


def sample(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest texel at trimesh's UVs (v up: image row 0 is v = 1)."""
    h, w = image.shape[:2]
    rows = np.clip(((1.0 - uv[:, 1]) * h).astype(int), 0, h - 1)
    cols = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    return image[rows, cols].astype(int)


@pytest.fixture(scope="module")
def baked():
    full = patterned_sphere()
    light = assets.decimate(full, 8_000)
    glb = bake_texture(light, full, SIZE)
    mesh, image = load_textured(glb)
    return full, light, mesh, image


def test_textured_glb_has_uvs_and_a_texture_of_the_requested_size(baked):
    full, light, mesh, image = baked
    assert image.shape == (SIZE, SIZE, 3)
    uv = mesh.visual.uv
    assert uv.shape == (len(mesh.vertices), 2)
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    # Same surface as the light mesh: xatlas only splits vertices along seams.
    assert len(mesh.faces) == len(light.faces)
    assert np.allclose(np.sort(np.unique(mesh.vertices.round(5), axis=0), axis=0),
                       np.sort(np.unique(light.vertices.round(5), axis=0), axis=0), atol=1e-5)


def test_texture_carries_the_full_meshs_colours(baked):
    full, _, mesh, image = baked
    tree = cKDTree(full.vertices)
    # At each vertex of the light mesh (on chart borders: nearest texel may be a gutter texel).
    _, nn = tree.query(mesh.vertices)
    err_v = np.abs(sample(image, mesh.visual.uv) - full.colors[nn].astype(int)).max(axis=1)
    assert np.median(err_v) <= 8 and np.mean(err_v <= 40) > 0.85
    # Inside each triangle (centroids): the detail the light mesh's vertices cannot hold.
    faces = mesh.faces
    centroid_uv = mesh.visual.uv[faces].mean(axis=1)
    _, nn = tree.query(mesh.vertices[faces].mean(axis=1))
    err_c = np.abs(sample(image, centroid_uv) - full.colors[nn].astype(int)).max(axis=1)
    assert np.median(err_c) <= 8 and np.mean(err_c <= 40) > 0.85
    # ...which the light mesh's vertex colours, interpolated, miss by far more.
    _, nv = tree.query(mesh.vertices)
    interp = full.colors[nv].astype(float)[faces].mean(axis=1)
    err_interp = np.abs(interp - full.colors[nn].astype(int)).max(axis=1)
    assert err_c.mean() < 0.5 * err_interp.mean()
    # Gutters filled: no black texel left anywhere.
    assert (image.max(axis=2) > 0).all()


def test_rasterize_covers_a_triangle_exactly():
    # One right triangle over a 4×4 grid: texel centres with x + y < 4 (in texel units) are in.
    uv_px = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    rows, cols, fids, bary = rasterize(uv_px, np.array([[0, 1, 2]]), 4)
    got = set(zip(rows.tolist(), cols.tolist()))
    want = {(r, c) for r in range(4) for c in range(4) if (r + 0.5) + (c + 0.5) <= 4}
    assert got == want and (fids == 0).all()
    assert np.allclose(bary.sum(axis=1), 1.0) and (bary >= -1e-6).all()


@pytest.mark.parametrize("size", [256, 5000])
def test_texture_size_is_bounded(tmp_path, size):
    r = make_client(tmp_path).post("/v1/generate", json={"prompt": "cup", "texture": True,
                                                         "texture_size": size})
    assert r.status_code == 422 and "texture_size" in r.json()["error"]["message"]


def _photo_form(**fields):
    return dict(files=[("image", ("c.png", photo_bytes("coffee")))],
                data={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()})


def test_embedded_backend_ignores_texture(tmp_path):
    evs = events_of(make_client(tmp_path).post("/v1/generate", **_photo_form(texture=True)))
    types = [e["type"] for e in evs]
    assert "texture_ready" not in types and types[-1] == "complete"
    assert "model_textured.glb" not in evs[-1]["artifacts"]


class DecodedClients(LocalClients):
    """The embedded reconstructor's stream, its final volume given a decoded mesh, as SAM 3D
    Objects returns one."""

    async def reconstruct(self, image, mask, options):
        async for item in self.reconstructor.stream(image, mask, options):
            if isinstance(item, Reconstruction):
                item = dataclasses.replace(item, mesh=patterned_sphere(5), backend="sam3d")
            yield item


def test_texture_ready_comes_after_glb_ready_and_before_complete(tmp_path):
    client = make_client(tmp_path, DecodedClients)
    evs = events_of(client.post("/v1/generate", **_photo_form(texture=True, texture_size=512,
                                                                face_budget=2000)))
    types = [e["type"] for e in evs]
    assert types.index("glb_ready") < types.index("texture_ready") == len(types) - 2
    ready, complete = evs[-2], evs[-1]
    assert complete["type"] == "complete" and "texture_baker" in complete["timings"]
    assert ready["artifact"] == "model_textured.glb" and ready["texture_size"] == 512
    assert complete["artifacts"]["model_textured.glb"] == {"url": ready["url"], "size_bytes": ready["size_bytes"]}
    body = client.get(ready["url"]).content
    assert len(body) == ready["size_bytes"]
    mesh, image = load_textured(body)
    assert image.shape == (512, 512, 3) and len(mesh.faces) <= 2000
    # Without the flag, no texture work at all.
    evs = events_of(client.post("/v1/generate", **_photo_form(face_budget=2000)))
    assert "texture_ready" not in [e["type"] for e in evs]
    assert "model_textured.glb" not in evs[-1]["artifacts"]


def test_a_failed_texture_bake_keeps_the_finished_artifacts(tmp_path):
    class Failing(DecodedClients):
        async def bake_texture(self, recon, artifact_id, options):
            raise RuntimeError("xatlas exploded at /srv/secret")

    evs = events_of(make_client(tmp_path, Failing).post(
        "/v1/generate", **_photo_form(texture=True, face_budget=2000)))
    assert evs[-1]["type"] == "complete" and "model.glb" in evs[-1]["artifacts"]
    assert "model_textured.glb" not in evs[-1]["artifacts"]
    note = next(e for e in evs if e["type"] == "loading" and "texture bake failed" in e.get("message", ""))
    assert "secret" not in note["message"]
