"""Reconstructor: image + mask → a stream of voxel frames, then the final volume."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import numpy as np
from ray import serve

from sam3d_common import metrics
from sam3d_common.settings import ReconstructorSettings

from .base import ReconstructOptions, Reconstruction, ReconstructorBackend, Started, StepFrame, StreamItem

__all__ = ["Reconstructor", "make_backend", "ReconstructOptions", "Reconstruction", "Started", "StepFrame"]


def make_backend(settings: ReconstructorSettings) -> ReconstructorBackend:
    if settings.backend == "inflation":
        from .inflation import InflationReconstructor

        return InflationReconstructor(settings.inflation, grid_size=settings.grid_size)
    if settings.backend == "sam3d":
        from .sam3d import Sam3dReconstructor

        return Sam3dReconstructor(settings.sam3d, grid_size=settings.grid_size)
    raise ValueError(f"unknown reconstructor backend {settings.backend!r}")


async def _cancel_when_gone(actor_id: str, task: asyncio.Task, period_s: float = 0.5) -> None:
    """Cancel `task` once the actor `actor_id` is dead (checked in the GCS every period_s)."""
    from ray._private.state import actors

    while True:
        await asyncio.sleep(period_s)
        try:
            state = (await asyncio.to_thread(actors, actor_id=actor_id)).get("State")
        except Exception:  # noqa: BLE001 - the GCS unreachable: keep serving, check again
            continue
        if state == "DEAD":
            task.cancel()
            return


@serve.deployment(name="Reconstructor", max_ongoing_requests=1)
class Reconstructor:
    def __init__(self, settings: dict | None = None):
        self.settings = ReconstructorSettings.model_validate(settings or {})
        self.backend = make_backend(self.settings)
        self.active = 0
        self.cancelled = 0
        self.completed = 0
        metrics.gpu_memory("Reconstructor")

    async def stream(self, image: np.ndarray, mask: np.ndarray,
                     options: ReconstructOptions, caller: str | None = None,
                     sent_at: float | None = None) -> AsyncIterator[StreamItem]:
        # Async generator all the way down: Serve cancels it on client disconnect and the
        # backend stops at its next step boundary. Serve does not when the calling replica
        # (ingress or job manager, `caller`: its actor id) dies, so a watcher does.
        # `sent_at`: the caller's time.time() when it sent the call (queue-wait metric).
        metrics.queue_wait("reconstructor", sent_at)
        self.active += 1
        watcher = (asyncio.create_task(_cancel_when_gone(caller, asyncio.current_task()))
                   if caller else None)
        try:
            yield Started()  # the caller stops counting itself as waiting in line
            async for item in self.backend.stream(image, mask, options):
                yield item
            self.completed += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
            if watcher is not None:
                watcher.cancel()

    def describe(self) -> dict:
        return {"backend": self.backend.name, "grid_size": self.settings.grid_size}

    def stats(self) -> dict:
        """Counters for operators and tests: streams running, finished, cancelled; steps run."""
        return {"active": self.active, "completed": self.completed, "cancelled": self.cancelled,
                "steps_run": getattr(self.backend, "steps_run", None)}

    def check_health(self) -> None:
        # Steps run in worker threads, so the event loop stays free to answer this during
        # a long reconstruction; a backend that lost its device says so here.
        check = getattr(self.backend, "check_health", None)
        if check is not None:
            check()
        metrics.gpu_memory("Reconstructor")
