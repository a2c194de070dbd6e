"""Time of the optional texture bake (deployments/mesh_baker/texture.py) at SAM 3D's sizes.

A synthetic full mesh of about 2 M faces (a bumpy UV sphere, colours varying faster than the
decimated mesh's vertices can hold) is decimated to 200k faces as model.glb is, then baked
into a texture_size² texture from the full mesh's colours. Reported per phase (xatlas unwrap;
rasterise + nearest full-mesh vertex + gutter fill; PNG + GLB), next to the time the mesh
baker already spends on the same mesh (decimate + model.glb), as a ratio.
With --compare-default, also xatlas' default chart options (one refinement iteration).

    python -m bench.bench_texture_bake [--faces 2000000] [--budget 200000] [--size 2048]
        [--compare-default] [--out bench/results/texture_bake.txt]

All figures come from the one run that prints them; nothing here is asserted.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import time
from pathlib import Path

import numpy as np


import trimesh  # noqa: E402
import xatlas  # noqa: E402
from PIL import Image  # noqa: E402

from deployments.mesh_baker import assets, texture  # noqa: E402
from deployments.reconstructor.base import MeshData  # noqa: E402


def synthetic_full(faces: int) -> MeshData:
    n = int(np.sqrt(faces / 4))  # a UV sphere of count n×n has about 4n² faces
    sphere = trimesh.creation.uv_sphere(radius=0.4, count=[n, n])
    v = sphere.vertices
    bump = 1.0 + 0.05 * np.sin(v[:, 0] * 40) * np.sin(v[:, 1] * 40)
    v = (v * bump[:, None]).astype(np.float32)
    colors = (40 + (np.sin(v * 60.0) + 1.0) * 100).astype(np.uint8)
    return MeshData(vertices=v, faces=sphere.faces.astype(np.uint32), colors=colors)


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faces", type=int, default=2_000_000)
    ap.add_argument("--budget", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--compare-default", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    lines = []

    def say(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    say(f"python {platform.python_version()} · {platform.machine()} · {os.cpu_count()} CPUs · "
        f"xatlas {getattr(xatlas, '__version__', '0.0.11')}")
    full = synthetic_full(a.faces)
    say(f"full mesh: {len(full.faces):,} faces, {len(full.vertices):,} vertices")
    model, t_dec = timed(assets.decimate, full, a.budget)
    _, t_glb = timed(assets.meshopt_glb, model)
    say(f"decimate to {len(model.faces):,} faces: {t_dec:.2f} s · model.glb (meshopt): {t_glb:.2f} s")

    (vmap, faces, uvs), t_unwrap = timed(texture.unwrap, model, a.size)
    say(f"xatlas unwrap (max_iterations=0): {t_unwrap:.2f} s · {len(vmap):,} UV vertices "
        f"({len(vmap) / len(model.vertices):.2f}× the mesh's)")
    vertices = np.asarray(model.vertices, np.float32)[vmap]
    image, t_img = timed(texture.bake_image, vertices, faces, uvs, full, a.size)
    uv_px = np.column_stack([uvs[:, 0] * a.size, (1.0 - uvs[:, 1]) * a.size])
    (rows, cols, _, _), t_rast = timed(texture.rasterize, uv_px, faces, a.size)
    mask = np.zeros((a.size, a.size), bool)
    mask[rows, cols] = True
    say(f"texture {a.size}²: rasterise + nearest vertex + gutter fill {t_img:.2f} s "
        f"(rasterise alone {t_rast:.2f} s; {mask.mean() * 100:.1f} % of texels covered)")

    def write():
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG", compress_level=6)
        return buf.getvalue()
    png, t_png = timed(write)
    glb, t_total = timed(texture.bake_texture, model, full, a.size)
    say(f"PNG {len(png) / 1e6:.1f} MB in {t_png:.2f} s · model_textured.glb {len(glb) / 1e6:.1f} MB")
    say(f"bake_texture end to end: {t_total:.2f} s = {t_total / (t_dec + t_glb):.1f}× the mesh "
        f"baker's decimate + model.glb ({t_dec + t_glb:.2f} s)")

    if a.compare_default:
        atlas = xatlas.Atlas()
        atlas.add_mesh(np.ascontiguousarray(model.vertices, np.float32),
                       np.ascontiguousarray(model.faces, np.uint32))
        pack = xatlas.PackOptions()
        pack.resolution, pack.padding, pack.bilinear = a.size, 2, True
        _, t_def = timed(atlas.generate, xatlas.ChartOptions(), pack)
        say(f"xatlas with default chart options: {t_def:.2f} s = {t_def / t_unwrap:.2f}× ours")

    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
