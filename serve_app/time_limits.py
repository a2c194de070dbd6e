"""Every time limit of a request, as async wrappers: one awaited stage call (`within`), a
stage's stream with a limit on its first item and on each gap (`timed_stream`), and a stream
cut off at an absolute deadline (`until_deadline`). Each raises a StageError subclass whose
message names the limit, so callers map it to a status or an `error` event.
"""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable

from sam3d_common.errors import QueueTimeout, StageTimeout


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


async def timed_stream(agen: AsyncIterator, first_s: float, gap_s: float) -> AsyncIterator:
    """Items of the reconstructor's stream, with a limit on the first (queueing: QueueTimeout)
    and on each gap (StageTimeout). Closes the stream when it ends or fails."""
    it = agen.__aiter__()
    limit, first = first_s, True
    try:
        while True:
            try:
                item = await _next_within(it, limit)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                if first:
                    raise QueueTimeout(f"no reconstructor could take the request within {first_s:g} s; "
                                       "retry in a while") from None
                raise StageTimeout(f"the reconstructor made no progress for {gap_s:g} s") from None
            limit, first = gap_s, False
            yield item
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


async def until_deadline(agen: AsyncIterator[dict], deadline: float) -> AsyncIterator[dict]:
    """Items of `agen` until the time.monotonic() `deadline`, then StageTimeout. Works per item
    so the timeout is raised inside this generator, never into whatever task happens to
    iterate it. Leaves closing `agen` to its owner."""
    while True:
        try:
            ev = await _next_within(agen, deadline - time.monotonic())
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise StageTimeout("the request exceeded its time limit") from None
        yield ev
