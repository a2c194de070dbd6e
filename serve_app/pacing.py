"""Self-pacing of one stream: a bounded, latest-wins frame buffer between pipeline and wire.

Ray Serve applies no flow control from a slow HTTP reader back to the replica (its ASGI
message queues are unbounded), so nothing tells us how fast the client reads. Instead each
stream releases frames at most `max_bytes_per_s`, and frames that a newer one may still
replace at most `max_frames_per_s`. A producer task drains the pipeline as fast as it
yields, so upstream frames never pile up in Ray either; when a new frame of a stage arrives
while an older one of that stage is still unsent, the newer one replaces it ("latest wins").
The last frame of each stage and every non-frame event are never dropped. A frame that
nothing can replace (a stage's last frame, a key frame) waits only for the byte budget, not
for the frame-rate gap: holding it back would coalesce nothing and only delay it and the
events behind it (`complete`). Frames are encoded when they are sent, so delta encodings are
always taken against what the client actually received. A frame's encoding (a few ms for a 64³
grid) runs in a worker thread, one frame at a time per stream, so the event loop that relays
every stream of the replica stays free; other events are encoded in place.

Bound: at most one pending frame per stage plus the final frames and events, whatever the
number of steps; the bytes a stream can push into Serve's queues are at most
max_bytes_per_s times its duration plus one frame; frames sent are at most max_frames_per_s
per second plus the last frame of each stage.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import AsyncIterator, Callable

from sam3d_common import metrics
from serve_app.protocol import FRAME_EVENTS
from sam3d_common.settings import StreamSettings

_END = object()


def _is_droppable(ev: dict) -> bool:
    """A frame that a newer one of its stage may replace: never a stage's last frame, nor the
    key frame that opens a resumed job stream (serve_app/jobs.py)."""
    return (ev.get("type") in FRAME_EVENTS and ev.get("step") != ev.get("total_steps")
            and not ev.get("key_frame"))


class FramePacer:
    def __init__(self, events: AsyncIterator[dict], settings: StreamSettings,
                 encode: Callable[[dict], tuple[object, int]], opening: bytes | None = None):
        """`encode(event) -> (what to yield, its size in bytes on the wire)`; the encoder's
        name (FrameWriter.sse, .binary, .python) is the `transport` tag of the stream metrics.
        `opening`: yielded first, outside the budget and the metrics (the binary stream header)."""
        self._events = events
        self._opening = opening
        self.transport = getattr(encode, "__name__", "other")
        self._settings = settings
        self._encode = encode
        self._queue: deque = deque()
        self._ready = asyncio.Event()
        self.coalesced = 0
        self.bytes_sent = 0
        self.frames_sent = 0
        self.max_pending = 0

    def _put(self, item) -> None:
        if isinstance(item, dict) and item.get("type") in FRAME_EVENTS:
            # Any newer frame of a stage, its last one included, replaces older unsent ones.
            stage = item["stage"]
            before = len(self._queue)
            self._queue = deque(q for q in self._queue
                                if not (isinstance(q, dict) and q.get("stage") == stage and _is_droppable(q)))
            dropped = before - len(self._queue)
            if dropped:
                self.coalesced += dropped
                metrics.record("sam3d_frames_total", dropped, transport=self.transport, outcome="coalesced")
        self._queue.append(item)
        self.max_pending = max(self.max_pending, len(self._queue))
        self._ready.set()

    async def _produce(self) -> None:
        try:
            async for ev in self._events:
                self._put(ev)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer to raise in order
            self._put(exc)
        else:
            self._put(_END)

    async def __aiter__(self) -> AsyncIterator:
        if self._opening is not None:
            yield self._opening
        producer = asyncio.create_task(self._produce())
        next_frame_at = 0.0  # the frame-rate gap: for frames a newer one may replace
        next_byte_at = 0.0  # the byte budget: for every frame
        try:
            while True:
                if not self._queue:
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                head = self._queue[0]
                if isinstance(head, dict) and head.get("type") in FRAME_EVENTS:
                    ready_at = max(next_frame_at, next_byte_at) if _is_droppable(head) else next_byte_at
                    wait = ready_at - time.monotonic()
                    if wait > 0:
                        # A newer frame may replace this one meanwhile (a stage's last frame
                        # need not wait for the rate gap): look again on arrival or after.
                        self._ready.clear()
                        try:
                            await asyncio.wait_for(self._ready.wait(), wait)
                        except asyncio.TimeoutError:
                            pass
                        continue
                item = self._queue.popleft()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                if item.get("type") == "complete":
                    item["coalesced_frames"] = self.coalesced
                is_frame = item.get("type") in FRAME_EVENTS
                data, size = await asyncio.to_thread(self._encode, item) if is_frame else self._encode(item)
                self.bytes_sent += size
                metrics.record("sam3d_stream_bytes_total", size, transport=self.transport)
                if is_frame:
                    self.frames_sent += 1
                    metrics.record("sam3d_frames_total", transport=self.transport, outcome="sent")
                    now = time.monotonic()
                    next_frame_at = now + 1.0 / self._settings.max_frames_per_s
                    next_byte_at = now + size / self._settings.max_bytes_per_s
                yield data
        finally:
            # Only the pacer's own task stops here: cancelling it ends the source where it
            # waits; closing the source is its owner's (serve_app/stream_owner.py).
            producer.cancel()
            try:
                await producer
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
