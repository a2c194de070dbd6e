"""The `full` voxel encoding (formerly named `seed`: the seed app's layout), kept
bit-compatible for existing clients: every frame whole.

Per voxel six uint8 [x, y, z, r, g, b]; each axis is min/max-normalised to 0..255
against `bounds_min`/`bounds_max` (range 0 counts as 1); missing colours are 128.
Base64 text in the event's `voxel_data` field.
"""
from __future__ import annotations

import base64

import numpy as np

from sam3d_common.frames import VoxelFrame

ENCODING_NAME = "binary_uint8_xyzrgb"


def encode(frame: VoxelFrame) -> dict:
    coords = frame.coords.astype(np.float64)
    if len(coords):
        lo, hi = coords.min(axis=0), coords.max(axis=0)
    else:
        lo = hi = np.zeros(3)
    rng = np.where(hi - lo == 0, 1.0, hi - lo)
    packed = np.empty((frame.count, 6), dtype=np.uint8)
    packed[:, :3] = ((coords - lo) / rng * 255).astype(np.uint8)
    packed[:, 3:] = 128 if frame.colors is None else frame.colors
    return {
        "encoding": ENCODING_NAME,
        "voxel_data": base64.b64encode(packed.tobytes()).decode("ascii"),
        "voxel_count": frame.count,
        "bounds_min": lo.tolist(),
        "bounds_max": hi.tolist(),
        "grid_size": frame.grid_size,
    }


def decode(fields: dict) -> tuple[np.ndarray, np.ndarray]:
    """Return (coords float64 (K,3) in grid units, colours uint8 (K,3)).

    The seed layout quantises each axis to 256 levels, so grids wider than 256
    voxels along one axis come back approximately; a 64^3 grid comes back exact
    after rounding.
    """
    raw = np.frombuffer(base64.b64decode(fields["voxel_data"]), dtype=np.uint8).reshape(-1, 6)
    lo = np.asarray(fields["bounds_min"], dtype=np.float64)
    hi = np.asarray(fields["bounds_max"], dtype=np.float64)
    coords = lo + raw[:, :3].astype(np.float64) / 255.0 * (hi - lo)
    return coords, raw[:, 3:].copy()
