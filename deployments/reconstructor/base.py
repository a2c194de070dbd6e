"""The interface every reconstructor backend (silhouette inflation, SAM 3D Objects) implements."""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol, Union

import numpy as np
from scipy import ndimage

from serve_app.protocol import VoxelFrame


@dataclass(frozen=True)
class ReconstructOptions:
    seed: int | None = None
    geometry_every: int = 1  # emit a geometry frame every N steps (the last step always)
    colors_every: int = 1


@dataclass
class StepFrame:
    stage: str  # "geometry" | "appearance"
    step: int  # 1-based
    total_steps: int
    frame: VoxelFrame

    @property
    def is_last(self) -> bool:
        return self.step == self.total_steps


@dataclass
class Reconstruction:
    """The final state handed to the mesh baker.

    occupancy: (N,N,N) bool indexed [x, y, z] (x right, y up, z towards the camera).
    colors: (N,N,N,3) uint8, meaningful where occupied (and near the surface).
    """

    occupancy: np.ndarray
    colors: np.ndarray
    backend: str = ""

    @property
    def grid_size(self) -> int:
        return int(self.occupancy.shape[0])


StreamItem = Union[StepFrame, Reconstruction]


def shell(occ: np.ndarray) -> np.ndarray:
    """Occupied voxels with at least one empty face neighbour: what a viewer can see."""
    return occ & ~ndimage.binary_erosion(occ, border_value=0)


def should_emit(step: int, total: int, every: int) -> bool:
    """Every `every`-th step, and always the last so no stage ends on a stale frame."""
    return step == total or step % every == 0


class ReconstructorBackend(Protocol):
    name: str

    def stream(self, image: np.ndarray, mask: np.ndarray,
               options: ReconstructOptions) -> AsyncIterator[StreamItem]:
        """Yield StepFrames as steps finish, then exactly one Reconstruction.

        Must be an async generator that awaits between steps, so cancellation lands at
        the next step boundary, and frees its state on CancelledError.
        """
        ...
