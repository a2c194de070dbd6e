"""The one owner of a stream's lifetime, from its first event to its close.

A stream (POST /v1/generate, GET /v1/jobs/{id}/events, the Python API) is a chain: an event
source (a pipeline run, a job subscription), the pacer that encodes it for the wire, the
transport that sends it. Each piece that holds something open while the stream runs — the
pipeline and with it the GPU stages' calls, the pacer's task, the key-frame registration, a
failed run's artifacts — registers here how to let it go (`on_close`). Whoever drives the
stream calls `close()` exactly where it stops driving it: when the stream has ended, failed,
or its client has gone away. `close()` runs every registered step once, newest first (the
consumer stops before what it consumes), and each step runs even if an earlier one raised.
No other piece closes anything of the stream.
"""
from __future__ import annotations

import inspect
from typing import AsyncIterator, Callable


class StreamOwner:
    def __init__(self, request_id: str, events: AsyncIterator[dict] | None = None):
        """`events`: the stream's events before encoding; `request_id`: its id on the wire
        (X-Sam3d-Request-Id, the key-frame route)."""
        self.request_id = request_id
        self.events = events
        self._steps: list[Callable[[], object]] = []
        self.closed = False

    def on_close(self, step: Callable[[], object]) -> None:
        """Call `step()` when the stream closes, awaiting what it returns if it is awaitable."""
        if self.closed:
            raise RuntimeError(f"stream {self.request_id} is already closed")
        self._steps.append(step)

    async def close(self) -> None:
        """Stop and release everything the stream holds, newest first; later calls do nothing.
        A step that raises does not keep the others from running; the first error is raised
        once all have run."""
        if self.closed:
            return
        self.closed = True
        error: BaseException | None = None
        while self._steps:
            step = self._steps.pop()
            try:
                result = step()
                if inspect.isawaitable(result):
                    await result
            except BaseException as exc:  # noqa: BLE001 - raised below, after the other steps
                error = error or exc
        if error is not None:
            raise error
