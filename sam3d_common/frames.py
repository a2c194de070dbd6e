"""The in-memory voxel frame that every encoding starts from and decodes back to."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_GRID_SIZE = 256


@dataclass(frozen=True)
class VoxelFrame:
    """Occupied voxels of an N^3 grid.

    coords: (K, 3) uint16 integer grid coordinates, each in [0, grid_size).
        Axes: x to the right, y up, z towards the camera.
    colors: (K, 3) uint8 RGB, or None while the stage has no colours yet.
    """

    grid_size: int
    coords: np.ndarray
    colors: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.grid_size <= MAX_GRID_SIZE:
            raise ValueError(f"grid_size must be in 1..{MAX_GRID_SIZE}, got {self.grid_size}")
        coords = np.ascontiguousarray(self.coords, dtype=np.uint16).reshape(-1, 3)
        object.__setattr__(self, "coords", coords)
        if self.colors is not None:
            colors = np.ascontiguousarray(self.colors, dtype=np.uint8).reshape(-1, 3)
            if len(colors) != len(coords):
                raise ValueError("colors and coords differ in length")
            object.__setattr__(self, "colors", colors)
        if len(coords) and int(coords.max()) >= self.grid_size:
            raise ValueError("a voxel coordinate lies outside the grid")

    @property
    def count(self) -> int:
        return len(self.coords)

    def linear_indices(self) -> np.ndarray:
        """x + N*y + N*N*z as int64, the order in which voxels are sorted on the wire."""
        c = self.coords.astype(np.int64)
        n = self.grid_size
        return c[:, 0] + n * c[:, 1] + n * n * c[:, 2]

    def sorted(self) -> "VoxelFrame":
        order = np.argsort(self.linear_indices(), kind="stable")
        colors = None if self.colors is None else self.colors[order]
        return VoxelFrame(self.grid_size, self.coords[order], colors)

    @classmethod
    def from_occupancy(cls, occupancy: np.ndarray, colors: np.ndarray | None = None) -> "VoxelFrame":
        """Build from a boolean (N,N,N) grid indexed [x, y, z]; colors (N,N,N,3) optional."""
        n = occupancy.shape[0]
        if occupancy.shape != (n, n, n):
            raise ValueError(f"occupancy must be cubic, got {occupancy.shape}")
        idx = np.argwhere(occupancy)
        # argwhere returns x-major order; the wire order is linear x + N*y + N*N*z.
        order = np.lexsort((idx[:, 0], idx[:, 1], idx[:, 2]))
        idx = idx[order]
        cols = None if colors is None else colors[idx[:, 0], idx[:, 1], idx[:, 2]]
        return cls(n, idx, cols)

    def to_occupancy(self) -> np.ndarray:
        occ = np.zeros((self.grid_size,) * 3, dtype=bool)
        c = self.coords
        occ[c[:, 0], c[:, 1], c[:, 2]] = True
        return occ
