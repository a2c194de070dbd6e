"""Every time limit of a request, as async wrappers: one awaited stage call (`within`), a
stage's stream with a limit on its first item and on each gap, telling a waiting request its
place in line (`timed_stream`), and the next item of a stream cut off at an absolute deadline
(`next_before`). Each raises a StageError subclass whose
message names the limit, so callers map it to a status or an `error` event.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable

from sam3d_common.errors import QueueTimeout, StageTimeout
from serve_app.waiting import WaitLine


async def within(aw: Awaitable, seconds: float, stage: str):
    """The result of `aw`, or StageTimeout after `seconds`."""
    try:
        return await asyncio.wait_for(aw, seconds)
    except asyncio.TimeoutError:
        raise StageTimeout(f"the {stage} stage took longer than its {seconds:g} s limit") from None


async def _next_within(it: AsyncIterator, seconds: float):
    """The next item of `it`; asyncio.TimeoutError after `seconds` (at once when ≤ 0)."""
    if seconds <= 0:
        raise asyncio.TimeoutError
    return await asyncio.wait_for(it.__anext__(), seconds)


@dataclass
class QueueNotice:
    """The request still waits for a reconstructor slot: its place in line (serve_app.waiting)."""

    position: int
    waiting: int
    waited_s: float


async def timed_stream(agen: AsyncIterator, first_s: float, gap_s: float, line: WaitLine | None = None,
                       notice_s: float = 0.25) -> AsyncIterator:
    """Items of the reconstructor's stream, with a limit on the first (queueing: QueueTimeout)
    and on each gap (StageTimeout). Closes the stream when it ends or fails.

    Until the first item arrives the request holds a place in `line`; every `notice_s` of that
    wait a QueueNotice is yielded when the place changed (the first one after `notice_s`).
    """
    it = agen.__aiter__()
    nxt = asyncio.ensure_future(it.__anext__())
    t0 = time.monotonic()
    try:
        with (line if line is not None else WaitLine()).waiting() as ticket:
            shown = None
            while not nxt.done():
                left = first_s - (time.monotonic() - t0)
                if left <= 0:
                    raise QueueTimeout(f"no reconstructor could take the request within {first_s:g} s; "
                                       "retry in a while")
                await asyncio.wait({nxt}, timeout=min(left, notice_s))
                if not nxt.done() and line is not None:
                    place = (line.position(ticket), len(line))
                    if place != shown:
                        shown = place
                        yield QueueNotice(place[0], place[1], time.monotonic() - t0)
        try:
            item = nxt.result()
        except StopAsyncIteration:
            return
        yield item
        while True:
            try:
                item = await _next_within(it, gap_s)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise StageTimeout(f"the reconstructor made no progress for {gap_s:g} s") from None
            yield item
    finally:
        if not nxt.done():
            nxt.cancel()
            try:
                await nxt
            except BaseException:  # noqa: BLE001 - the cancelled wait ends however it ends
                pass
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


async def next_before(it: AsyncIterator, deadline: float):
    """The next item of `it` if it comes before the time.monotonic() `deadline`, else
    StageTimeout; StopAsyncIteration at its end. Awaited by whoever iterates `it`, so the
    timeout is raised there, never into whatever task happens to run; closing `it` is left to
    its owner."""
    try:
        return await _next_within(it, deadline - time.monotonic())
    except asyncio.TimeoutError:
        raise StageTimeout("the request exceeded its time limit") from None
