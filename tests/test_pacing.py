"""The per-stream pacer on its own: what it may drop, what it never drops, and its rate."""
import asyncio
import time

from serve_app.pacing import FramePacer
from sam3d_common.settings import StreamSettings


def frame(stage, step, total):
    return {"type": stage, "stage": stage, "step": step, "total_steps": total}


async def fast_pipeline(n_geo=50, n_app=30):
    yield {"type": "loading", "stage": "segmenter", "step": 0, "total_steps": 0}
    for k in range(1, n_geo + 1):
        yield frame("geometry", k, n_geo)
    for k in range(1, n_app + 1):
        yield frame("appearance", k, n_app)
    yield {"type": "complete", "stage": "store", "step": 1, "total_steps": 1}


def run(events, settings, size=100, read_delay=0.0):
    async def go():
        out = []
        pacer = FramePacer(events, settings, lambda ev: (dict(ev), size))
        async for ev in pacer.__aiter__():
            out.append(ev)
            if read_delay:
                await asyncio.sleep(read_delay)
        return out, pacer
    return asyncio.run(go())


def test_rate_limit_coalesces_but_keeps_last_frames_and_events():
    t0 = time.monotonic()
    out, pacer = run(fast_pipeline(), StreamSettings(max_frames_per_s=20))
    elapsed = time.monotonic() - t0
    types = [e["type"] for e in out]
    assert types[0] == "loading" and types[-1] == "complete"
    geo = [e["step"] for e in out if e["type"] == "geometry"]
    app = [e["step"] for e in out if e["type"] == "appearance"]
    assert geo[-1] == 50 and app[-1] == 30 and geo == sorted(geo) and app == sorted(app)
    assert pacer.coalesced == 80 - len(geo) - len(app) > 60
    assert out[-1]["coalesced_frames"] == pacer.coalesced
    assert elapsed < 2.0  # a flat-out producer is not slowed to the frame rate


def test_byte_budget_limits_frames():
    out, pacer = run(fast_pipeline(10, 10), StreamSettings(max_frames_per_s=1000, max_bytes_per_s=10_000),
                     size=5_000)
    frames = [e for e in out if e["type"] in ("geometry", "appearance")]
    assert 2 <= len(frames) < 20 and frames[-1]["step"] == 10


def test_nothing_dropped_when_the_reader_keeps_up():
    async def slow_pipeline():
        for k in range(1, 6):
            await asyncio.sleep(0.06)
            yield frame("geometry", k, 5)
    out, pacer = run(slow_pipeline(), StreamSettings(max_frames_per_s=50))
    assert [e["step"] for e in out] == [1, 2, 3, 4, 5] and pacer.coalesced == 0


def test_buffer_stays_bounded_for_a_slow_reader():
    out, pacer = run(fast_pipeline(400, 400), StreamSettings(max_frames_per_s=1000), read_delay=0.01)
    # At most: one pending frame per stage (2), each stage's last frame (2), the loading and
    # complete events (2) and the end-of-stream marker (1); 800 frames were produced.
    assert pacer.max_pending <= 7, pacer.max_pending
    assert out[-1]["type"] == "complete"


def test_error_is_raised_in_order_after_earlier_events():
    async def failing():
        yield frame("geometry", 1, 3)
        raise RuntimeError("boom")

    async def go():
        got = []
        try:
            async for ev in FramePacer(failing(), StreamSettings(), lambda e: (e, 1)).__aiter__():
                got.append(ev)
        except RuntimeError as exc:
            return got, str(exc)
    got, err = asyncio.run(go())
    assert [e["step"] for e in got] == [1] and err == "boom"


def test_closing_the_consumer_closes_the_pipeline():
    closed = []

    async def endless():
        try:
            k = 0
            while True:
                k += 1
                await asyncio.sleep(0.001)
                yield frame("geometry", k, 10**9)
        finally:
            closed.append(True)

    async def go():
        agen = FramePacer(endless(), StreamSettings(max_frames_per_s=100), lambda e: (e, 1)).__aiter__()
        await agen.__anext__()
        await agen.aclose()
    asyncio.run(go())
    assert closed == [True]


def test_last_frames_and_complete_do_not_wait_for_the_frame_rate():
    # At 2 frames/s, holding each stage's last frame for the rate gap would put `complete`
    # at least 1 s after the first frame; nothing could replace those frames meanwhile.
    t0 = time.monotonic()
    out, pacer = run(fast_pipeline(), StreamSettings(max_frames_per_s=2))
    elapsed = time.monotonic() - t0
    frames = [(e["type"], e["step"]) for e in out if e["type"] in ("geometry", "appearance")]
    assert frames[-2:] == [("geometry", 50), ("appearance", 30)] and len(frames) <= 3
    assert out[-1]["type"] == "complete" and out[-1]["coalesced_frames"] == 80 - len(frames)
    assert elapsed < 0.4, elapsed


def test_rate_still_caps_replaceable_frames():
    async def steady():
        for k in range(1, 41):
            await asyncio.sleep(0.01)
            yield frame("geometry", k, 40)
    t0 = time.monotonic()
    out, pacer = run(steady(), StreamSettings(max_frames_per_s=10))
    elapsed = time.monotonic() - t0
    steps = [e["step"] for e in out]
    # Over ~0.4 s at 10 frames/s: the first frame, a few replaceable ones, and the last.
    assert steps[-1] == 40 and len(steps) <= 10 * elapsed + 2, (steps, elapsed)


def test_last_frames_still_wait_for_the_byte_budget():
    t0 = time.monotonic()
    out, pacer = run(fast_pipeline(10, 10), StreamSettings(max_frames_per_s=1000, max_bytes_per_s=10_000),
                     size=5_000)
    frames = [e for e in out if e["type"] in ("geometry", "appearance")]
    # 5 KB frames at 10 KB/s: each frame after the first waits 0.5 s, the last ones too.
    assert time.monotonic() - t0 >= 0.5 * (len(frames) - 1) - 0.05
    assert frames[-1]["step"] == 10


def test_frames_are_encoded_off_the_event_loop_in_order():
    """A frame's encoding (milliseconds for a 64³ grid) runs in a worker thread, one at a time and in
    order, so the loop that relays the replica's other streams stays free; other events in place."""
    seen = []

    def encode(ev):
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        seen.append((ev["type"], ev["step"], on_loop))
        return dict(ev), 100

    async def go():
        return [ev async for ev in FramePacer(fast_pipeline(5, 3), StreamSettings(max_frames_per_s=1000), encode)]

    out = asyncio.run(go())
    assert [e["type"] for e in out][0] == "loading" and out[-1]["type"] == "complete"
    assert [(t, s) for t, s, _ in seen] == [(e["type"], e["step"]) for e in out]
    assert all(on_loop == (t not in ("geometry", "appearance")) for t, _, on_loop in seen)
