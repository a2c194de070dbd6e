"""Colour coding of the `compact` frame body: exact RGB888 colours as per-channel residuals.

A frame's colour section (docs/frame-format.md, section 4.2) is either spatial (every voxel,
residual against the previous voxel of the frame) or temporal (the listed voxels only,
residual against the base frame's colour), as three planes of bytes mod 256. This module
holds the modes, the residual arithmetic and the cost table the encoder (compact_codec.py)
uses to choose between them, and the reading of the planes; the index set of a temporal
section is coded by compact_sets.py.
"""
from __future__ import annotations

import numpy as np

from .compact_message import FrameFormatError

# Colour section modes.
COLOR_SPATIAL = 0  # every voxel, residual against the previous voxel of the frame
COLOR_TEMPORAL = 1  # listed voxels only, residual against the base frame's colour
COLOR_MODE_NAMES = {COLOR_SPATIAL: "spatial", COLOR_TEMPORAL: "temporal"}


# --------------------------------------------------------------------------- colours

# Rough cost in bits of a residual byte once deflated: its signed magnitude's bit length,
# with zero (unchanged) nearly free. Only used to choose between codings.
_RESIDUAL_BITS = np.array([0.25] + [1 + min(b, 256 - b).bit_length() for b in range(1, 256)])


def _pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(K, 3) uint8 → (K,) uint32 r | g << 8 | b << 16, for fast compares and gathers."""
    c = colors.astype(np.uint32)
    return c[:, 0] | (c[:, 1] << 8) | (c[:, 2] << 16)


def _spatial_residuals(colors: np.ndarray) -> np.ndarray:
    """(3, K) uint8 planes: each colour minus the previous voxel's, mod 256."""
    res = np.diff(colors, axis=0, prepend=np.zeros((1, 3), np.uint8))
    return np.ascontiguousarray(res.T)


def _residual_planes(current: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(3, M) uint8 planes of packed colours minus packed predictions, per channel mod 256."""
    out = np.empty((3, len(current)), np.uint8)
    for ch in range(3):
        out[ch] = ((current >> (8 * ch)) - (predicted >> (8 * ch))) & 0xFF
    return out


def _planes(buf: np.ndarray, pos: int, count: int) -> tuple[np.ndarray, int]:
    end = pos + 3 * count
    if end > len(buf):
        raise FrameFormatError("message ends inside the colour planes")
    return buf[pos:end].reshape(3, count), end
