"""Helpers the compact codec tests share (tests/test_compact_*.py): what a decoder must give back
for a frame, the check that it did, ellipsoid shells from the vector generator, and the folder
of committed vectors (docs/frame-format.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from serve_app.protocol import VoxelFrame

VECTORS = Path(__file__).parent.parent / "vectors"


def canonical(frame: VoxelFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """What the decoder must give back: voxels sorted by linear index, first colour of a repeat."""
    lin = frame.linear_indices()
    order = np.argsort(lin, kind="stable")
    lin = lin[order]
    first = np.concatenate(([True], np.diff(lin) != 0)) if len(lin) else np.zeros(0, bool)
    cols = None if frame.colors is None else frame.colors[order][first]
    return frame.coords[order][first], cols


def assert_same(decoded: VoxelFrame, original: VoxelFrame) -> None:
    coords, cols = canonical(original)
    assert decoded.grid_size == original.grid_size
    assert np.array_equal(decoded.coords, coords)
    if cols is None:
        assert decoded.colors is None
    else:
        # Colours are exact: the stated error bound is 0 per channel.
        assert decoded.colors is not None
        assert int(np.abs(decoded.colors.astype(int) - cols.astype(int)).max(initial=0)) == 0


def shell(n: int, radii, centre=None) -> np.ndarray:
    from vectors.make_vectors import ellipsoid_shell

    return ellipsoid_shell(n, radii, centre)
