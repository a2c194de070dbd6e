"""Test helper: a GLB whose buffer views are EXT_meshopt_compression-encoded (as gltfpack writes them).

Used by the browser test to check that the viewer's GLTFLoader has its meshopt decoder: the final
model.glb may be written this way. The file has a required extension and a fallback buffer without
data, so a loader without the decoder fails instead of silently showing nothing.
"""
from __future__ import annotations

import json
import struct

import meshoptimizer
import numpy as np

EXT = "EXT_meshopt_compression"


def _pad(b: bytes, fill: bytes = b"\0") -> bytes:
    return b + fill * (-len(b) % 4)


def meshopt_glb(positions: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> bytes:
    """positions Nx3 float, faces Mx3 int, colors Nx3 uint8 → GLB bytes (one mesh, vertex colours)."""
    pos = np.ascontiguousarray(positions, np.float32)
    rgba = np.ascontiguousarray(np.column_stack([colors, np.full(len(colors), 255)]).astype(np.uint8))
    idx = np.ascontiguousarray(faces, np.uint32).reshape(-1)
    n = len(pos)
    streams = [
        (meshoptimizer.encode_vertex_buffer(pos, n, 12), 12, n, "ATTRIBUTES", pos.nbytes),
        (meshoptimizer.encode_vertex_buffer(rgba, n, 4), 4, n, "ATTRIBUTES", rgba.nbytes),
        (meshoptimizer.encode_index_buffer(idx, len(idx), n), 4, len(idx), "TRIANGLES", idx.nbytes),
    ]
    body, views, fallback = b"", [], 0
    for data, stride, count, mode, raw in streams:
        ext = {"buffer": 0, "byteOffset": len(body), "byteLength": len(data), "byteStride": stride,
               "count": count, "mode": mode}
        body += _pad(data)
        view = {"buffer": 1, "byteOffset": fallback, "byteLength": raw, "extensions": {EXT: ext}}
        if mode == "ATTRIBUTES":
            view["byteStride"] = stride
            view["target"] = 34962
        else:
            view["target"] = 34963
        views.append(view)
        fallback += raw + (-raw % 4)
    gltf = {
        "asset": {"version": "2.0", "generator": "sam3d-serve tests/meshopt_glb.py"},
        "extensionsUsed": [EXT], "extensionsRequired": [EXT],
        "buffers": [{"byteLength": len(body)}, {"byteLength": fallback, "extensions": {EXT: {"fallback": True}}}],
        "bufferViews": views,
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": n, "type": "VEC3",
             "min": pos.min(0).tolist(), "max": pos.max(0).tolist()},
            {"bufferView": 1, "componentType": 5121, "normalized": True, "count": n, "type": "VEC4"},
            {"bufferView": 2, "componentType": 5125, "count": len(idx), "type": "SCALAR"},
        ],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "indices": 2}]}],
        "nodes": [{"mesh": 0}], "scenes": [{"nodes": [0]}], "scene": 0,
    }
    js = _pad(json.dumps(gltf, separators=(",", ":")).encode(), b" ")
    total = 12 + 8 + len(js) + 8 + len(body)
    return (struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(js), b"JSON") + js
            + struct.pack("<I4s", len(body), b"BIN\0") + body)


def sphere(subdiv: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A UV sphere in [-0.5, 0.5]³ coloured by height: (positions, faces, colors)."""
    th, ph = np.meshgrid(np.linspace(0, np.pi, subdiv + 1), np.linspace(0, 2 * np.pi, 2 * subdiv + 1), indexing="ij")
    pos = 0.5 * np.stack([np.sin(th) * np.cos(ph), np.cos(th), np.sin(th) * np.sin(ph)], -1).reshape(-1, 3)
    w = 2 * subdiv + 1
    faces = []
    for i in range(subdiv):
        for j in range(2 * subdiv):
            a, b = i * w + j, i * w + j + 1
            c, d = a + w, b + w
            faces += [(a, c, b), (b, c, d)]
    t = (pos[:, 1] + 0.5)[:, None]
    colors = (np.array([40, 90, 220]) * (1 - t) + np.array([230, 120, 40]) * t).astype(np.uint8)
    return pos, np.asarray(faces), colors
