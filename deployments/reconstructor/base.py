"""The interface every reconstructor backend (silhouette inflation, SAM 3D Objects) implements."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import AsyncIterator, Protocol, Union

import numpy as np
from scipy import ndimage

from sam3d_common.frames import VoxelFrame


@dataclass(frozen=True)
class ReconstructOptions:
    seed: int | None = None
    geometry_every: int = 1  # emit a geometry frame every N steps (the last step always)
    colors_every: int = 1
    # Per-request sampling; None keeps the backend's configured value.
    geometry_steps: int | None = None
    appearance_steps: int | None = None
    fast: bool = False  # distilled few-step sampling without CFG, where the backend has it
    # Of the steps to be shown, at most one per this many seconds per stage (and always the
    # first and the last): the ingress sets it from the stream's frame-rate cap, so that no
    # frame is built (on a GPU: no preview decoded) that the stream would coalesce away.
    # 0 shows every `*_every`-th step.
    min_frame_interval_s: float = 0.0


@dataclass(frozen=True)
class Pose:
    """Object-local → camera placement, as SAM 3D Objects predicts it.

    PyTorch3D conventions: rotation is a (w, x, y, z) quaternion of a row-vector transform,
    p_camera = scale * p_local @ R(rotation) + translation; the camera looks along +z with
    +x left and +y up.
    """

    rotation: tuple[float, float, float, float]
    translation: tuple[float, float, float]
    scale: tuple[float, float, float]

    def as_dict(self) -> dict:
        return {"rotation_wxyz": list(self.rotation), "translation": list(self.translation),
                "scale": list(self.scale), "convention": "pytorch3d-camera"}


@dataclass
class MeshData:
    """A decoded triangle mesh in the model's object-local frame (unit cube, unposed)."""

    vertices: np.ndarray  # (V, 3) float32
    faces: np.ndarray  # (F, 3) int32
    colors: np.ndarray  # (V, 3) uint8


@dataclass
class GaussianData:
    """Decoded 3D Gaussians in the object-local frame, already activated where 3DGS files
    store them activated: opacity as a logit, scales as natural logs, unit wxyz rotations."""

    xyz: np.ndarray  # (N, 3) float32
    f_dc: np.ndarray  # (N, 3) float32, degree-0 SH coefficients
    opacity: np.ndarray  # (N,) float32 logit
    scale: np.ndarray  # (N, 3) float32 log
    rotation: np.ndarray  # (N, 4) float32 wxyz, unit norm


@dataclass
class StepFrame:
    stage: str  # "geometry" | "appearance"
    step: int  # 1-based
    total_steps: int
    frame: VoxelFrame


@dataclass
class Reconstruction:
    """The final state handed to the mesh baker.

    occupancy: (N,N,N) bool indexed [x, y, z] (x right, y up, z towards the camera).
    colors: (N,N,N,3) uint8, meaningful where occupied (and near the surface).
    """

    occupancy: np.ndarray
    colors: np.ndarray
    backend: str = ""
    # Full-fidelity outputs of backends that decode them (SAM 3D Objects); the mesh baker
    # writes these as the GLB and splat PLY, posed, and meshes the volume for the preview.
    mesh: MeshData | None = None
    gaussians: GaussianData | None = None
    pose: Pose | None = None

    @property
    def grid_size(self) -> int:
        return int(self.occupancy.shape[0])


@dataclass
class Started:
    """First item of the Reconstructor deployment's stream: a replica has taken the request (it
    no longer waits in the caller's queue). Backends never yield it."""


StreamItem = Union[Started, StepFrame, Reconstruction]


def shell(occ: np.ndarray) -> np.ndarray:
    """Occupied voxels with at least one empty face neighbour: what a viewer can see."""
    return occ & ~ndimage.binary_erosion(occ, border_value=0)


def should_emit(step: int, total: int, every: int) -> bool:
    """Every `every`-th step, and always the last so no stage ends on a stale frame."""
    return step == total or step % every == 0


class FrameGate:
    """Which steps of one stage are shown: those `should_emit` picks, thinned so that at most
    one per `min_interval_s` is (the first and the last always are). Asked once per step, in
    order, when the step is about to run."""

    def __init__(self, every: int, min_interval_s: float = 0.0, clock=time.monotonic):
        self.every = every
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last: float | None = None

    def __call__(self, step: int, total: int) -> bool:
        if not should_emit(step, total, self.every):
            return False
        now = self._clock()
        if step != total and self._last is not None and now - self._last < self.min_interval_s:
            return False
        self._last = now
        return True


class ReconstructorBackend(Protocol):
    name: str

    def stream(self, image: np.ndarray, mask: np.ndarray,
               options: ReconstructOptions) -> AsyncIterator[StreamItem]:
        """Yield StepFrames as steps finish, then exactly one Reconstruction.

        Must be an async generator that awaits between steps, so cancellation lands at
        the next step boundary, and frees its state on CancelledError.
        """
        ...
