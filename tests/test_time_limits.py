"""serve_app.time_limits: each wrapper raises its StageError when its limit passes, and only then."""
import asyncio
import time

import pytest

from sam3d_common.errors import QueueTimeout, StageTimeout
from serve_app.time_limits import next_before, timed_stream, within


async def _slow(delays: list[float], closed: list | None = None):
    try:
        for i, d in enumerate(delays):
            await asyncio.sleep(d)
            yield i
    finally:
        if closed is not None:
            closed.append(True)


async def test_within_returns_in_time_and_names_the_stage_when_late():
    assert await within(asyncio.sleep(0, "ok"), 1.0, "segmenter") == "ok"
    with pytest.raises(StageTimeout, match="segmenter stage took longer than its 0.05 s"):
        await within(asyncio.sleep(1), 0.05, "segmenter")


async def test_timed_stream_limits_the_first_item_and_each_gap_and_closes():
    closed = []
    assert [i async for i in timed_stream(_slow([0.0, 0.0], closed), 1.0, 1.0)] == [0, 1]
    assert closed == [True]
    with pytest.raises(QueueTimeout, match="within 0.05 s"):
        [i async for i in timed_stream(_slow([1.0]), 0.05, 1.0)]
    closed = []
    with pytest.raises(StageTimeout, match="no progress for 0.05 s"):
        [i async for i in timed_stream(_slow([0.0, 1.0], closed), 1.0, 0.05)]
    assert closed == [True]


async def _items_before(it, deadline):
    out = []
    while True:
        try:
            out.append(await next_before(it, deadline))
        except StopAsyncIteration:
            return out


async def test_next_before_cuts_a_stream_at_an_absolute_time():
    assert await _items_before(_slow([0.0, 0.0]), time.monotonic() + 1.0) == [0, 1]
    it, deadline, got = _slow([0.0, 0.05, 1.0]), time.monotonic() + 0.3, []
    with pytest.raises(StageTimeout, match="exceeded its time limit"):
        while True:
            got.append(await next_before(it, deadline))
    assert got == [0, 1]
    with pytest.raises(StageTimeout):  # a deadline already past: no item at all
        await next_before(_slow([0.0]), time.monotonic() - 1)