"""A fake SAM 3D Objects model for the backend's streaming tests (tests/test_sam3d_backend.py).

The fake stands in for sam3d_upstream.UpstreamRun (which needs CUDA and the gated weights and
is not run in tests). Its "latents" are deterministic: geometry previews are a box whose size grows
with the step, appearance previews colour each voxel from its position and the step. Nothing
built on it says anything about SAM 3D Objects' output quality.
"""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np

from deployments.reconstructor.base import GaussianData, MeshData, Pose, ReconstructOptions
from deployments.reconstructor.sam3d_grid import surface

M = 64  # the model's local grid


class FakeModel:
    """Records every call, in order, with the thread it ran on."""

    def __init__(self, step_s: float = 0.0, rotation=None, empty: bool = False,
                 fail_at: str | None = None):
        self.step_s, self.rotation, self.empty, self.fail_at = step_s, rotation, empty, fail_at
        self.calls: list[str] = []
        self.threads: set[str] = set()
        self.begun: list[tuple] = []

    def begin(self, image, mask, seed, geometry_steps, appearance_steps, fast=False):
        self.begun.append((image.shape, int(mask.sum()), seed, geometry_steps, appearance_steps))
        self.fast = fast
        return FakeRun(self, geometry_steps, appearance_steps)


class FakeRun:
    def __init__(self, model: FakeModel, g: int, a: int):
        self.model, self.g, self.a = model, g, a
        self.geo_done = self.app_done = 0
        self.occ = None

    def _log(self, name):
        self.model.calls.append(name)
        self.model.threads.add(threading.current_thread().name)
        if self.model.fail_at == name:
            raise RuntimeError(f"fake failure in {name}")

    def prepare(self):
        self._log("prepare")

    def geometry_step(self):
        self._log("geometry_step")
        time.sleep(self.model.step_s)
        self.geo_done += 1
        self.model.calls.append("geometry_step_end")

    def geometry_preview(self):
        self._log("geometry_preview")
        occ = np.zeros((M,) * 3, bool)
        if not self.model.empty:
            h = 4 + 20 * self.geo_done // self.g  # grows from a small to a large box
            occ[32 - h:32 + h, 32 - h // 2:32 + h // 2, 32 - h // 4:32 + h // 4] = True
        return SimpleNamespace(occupancy=occ, rotation=self.model.rotation)

    def start_appearance(self, occupancy):
        self._log("start_appearance")
        self.occ = occupancy

    def appearance_step(self):
        self._log("appearance_step")
        time.sleep(self.model.step_s)
        self.app_done += 1

    def appearance_preview(self):
        self._log("appearance_preview")
        coords = np.argwhere(surface(self.occ))
        colors = np.zeros((len(coords), 3), np.uint8)
        colors[:, 0] = 255 * self.app_done // self.a  # red rises to 255 at the last step
        colors[:, 1] = coords[:, 1] * 4  # green follows local y
        return SimpleNamespace(coords=coords, colors=colors)

    def finish(self):
        """A decoded tetrahedron, two Gaussians and a pose, as the real run returns them."""
        self._log("finish")
        mesh = MeshData(vertices=np.array([[0, 0, 0], [0.2, 0, 0], [0, 0.2, 0], [0, 0, 0.2]], np.float32),
                        faces=np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32),
                        colors=np.full((4, 3), 200, np.uint8))
        gaussians = GaussianData(xyz=np.zeros((2, 3), np.float32), f_dc=np.zeros((2, 3), np.float32),
                                 opacity=np.zeros(2, np.float32), scale=np.full((2, 3), -4, np.float32),
                                 rotation=np.array([[1, 0, 0, 0]] * 2, np.float32))
        return SimpleNamespace(mesh=mesh, gaussians=gaussians,
                               pose=Pose((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 2.0), (1.0, 1.0, 1.0)))

    def release(self):
        self._log("release")


def photo(h=48, w=64):
    image = np.full((h, w, 3), 200, np.uint8)
    mask = np.zeros((h, w), bool)
    mask[10:40, 20:50] = True
    return image, mask


async def collect(backend, options=ReconstructOptions()):
    image, mask = photo()
    return [item async for item in backend.stream(image, mask, options)]
