"""What a JobManager holds in memory for a job it runs: the photo (in `job`), the latest voxel
frame, and the subscribers of its live events. Everything else is in the job store."""
from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from serve_app.job_store import QUEUED
from serve_app.pipeline import Job
from serve_app.protocol import FRAME_EVENTS


class Subscriber:
    """Events for one reader: unsent non-final frames of a stage are replaced by newer ones,
    so a slow reader costs at most one pending frame per stage."""

    def __init__(self):
        self.queue: deque = deque()
        self.ready = asyncio.Event()

    def put(self, ev: dict | None) -> None:
        if ev is not None and ev["type"] in FRAME_EVENTS and ev["step"] != ev["total_steps"]:
            self.queue = deque(q for q in self.queue
                               if q is None or q["stage"] != ev["stage"] or q["type"] not in FRAME_EVENTS)
        self.queue.append(ev)
        self.ready.set()

    async def get(self) -> dict | None:
        while not self.queue:
            self.ready.clear()
            await self.ready.wait()
        return self.queue.popleft()


@dataclass
class Live:
    """A job queued or running in this manager: what only memory holds."""

    job: Job
    record: dict  # as created in the store (created, inputs, fields)
    state: str = QUEUED
    frame: dict | None = None  # the latest geometry/appearance event, with its `_frame`
    frame_stored: float = -float("inf")  # monotonic time the store last got a frame
    frame_stored_seq: int = -1
    subscribers: list[Subscriber] = field(default_factory=list)
    task: asyncio.Task | None = None
    cancel_reason: str | None = None
    begun: bool = False  # its task has started (a task cancelled before that never runs its cleanup)
    ended_elsewhere: bool = False  # its end was recorded by another manager (or a reaper)
    finishing: bool = False  # its task records its end: nothing may cancel it now
