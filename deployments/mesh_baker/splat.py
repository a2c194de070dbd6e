"""Gaussian-splat PLY in the layout of the original 3D Gaussian Splatting code.

One isotropic splat per surface voxel. Properties, all float32, in this order:
x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3
f_dc holds the degree-0 spherical-harmonic coefficient ((rgb - 0.5) / C0), opacity is
stored as a logit, scales as natural logs, rotation as a unit quaternion (w first).
"""
from __future__ import annotations

import numpy as np

from ..reconstructor.base import Reconstruction, shell
from ..reconstructor.sam3d_grid import SH_C0

PROPERTIES = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


def splat_ply_bytes(recon: Reconstruction, opacity: float = 0.95) -> bytearray:
    n = recon.grid_size
    idx = np.argwhere(shell(recon.occupancy))
    rgb = recon.colors[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float32) / 255.0
    ply, data = ply_buffer(len(idx))
    data[:, 0:3] = (idx + 0.5) / n - 0.5
    data[:, 6:9] = (rgb - 0.5) / SH_C0
    data[:, 9] = np.log(opacity / (1 - opacity))
    # A splat as wide as its voxel: sigma ≈ half the voxel edge.
    data[:, 10:13] = np.log(0.5 / n)
    data[:, 13] = 1.0
    return ply


def ply_buffer(count: int) -> tuple[bytearray, np.ndarray]:
    """A binary PLY of ``count`` vertices, zero-filled, and the (count, len(PROPERTIES))
    little-endian float32 view of its rows: callers fill the rows in place, so a PLY of ~1M
    Gaussians (~66 MB) is built without copying it."""
    header = "ply\nformat binary_little_endian 1.0\n"
    header += f"element vertex {count}\n"
    header += "".join(f"property float {p}\n" for p in PROPERTIES)
    header = (header + "end_header\n").encode("ascii")
    buf = bytearray(len(header) + count * len(PROPERTIES) * 4)
    buf[:len(header)] = header
    rows = np.frombuffer(buf, "<f4", offset=len(header)).reshape(count, len(PROPERTIES))
    return buf, rows
