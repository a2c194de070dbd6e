"""The benchmarks' asyncio stand-in for @serve.batch keeps the decorator's rules: batches close when full
(or wait_s after their first request), at most max_concurrent_batches run at once, and in "pipelined" mode
(the Segmenter deployment's) a batch holds its slot until its GPU work is done."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

pytest.importorskip("torch")

from bench.serve_batch_standin import serve_batch_run  # noqa: E402
from deployments.segmenter import ENCODER_CONCURRENT_BATCHES  # noqa: E402


@pytest.mark.parametrize("mode, most_expected", [("pipelined", ENCODER_CONCURRENT_BATCHES), ("enqueue", 1)])
def test_standin_runs_batches_as_the_mode_says_and_fills_them_under_load(mode, most_expected):
    running, most, sizes = 0, 0, []
    guard = threading.Lock()

    def encode(images, ids):
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with guard:
            running -= 1
        sizes.append(len(images))
        return list(ids)

    out = asyncio.run(serve_batch_run(encode, list(range(48)), 32, 8, 0.01, key=str, real_serve=False, mode=mode))
    assert most == most_expected  # never more batches in the encoder at once than the mode allows
    assert max(sizes) == 8 and sum(sizes) == 8 + 48  # the warm-up's 8, then every request once
    assert out["mean_batch"] >= 6  # 32 in flight: the batches fill (8.0 unless the machine stalls a request)
    assert not out["real_serve_batch"] and out["mode"] == mode


class _Done:
    """A stand-in CUDA event: done `after_s` after the batch was queued."""

    def __init__(self, after_s: float):
        self.at = time.perf_counter() + after_s

    def query(self) -> bool:
        return time.perf_counter() >= self.at


class _Embedding:
    def __init__(self, ready):
        self.ready = ready


@pytest.mark.parametrize("mode", ["pipelined", "enqueue"])
def test_pipelined_batches_hold_their_slot_until_their_gpu_work_is_done(mode):
    """encode() returns at once (kernels queued) and its results are ready 30 ms later (a "GPU" that runs
    batches one after another). Pipelined: when a batch starts, at most one earlier batch is still
    unfinished, so the next batch forms from what arrived meanwhile. Enqueue: the handler lets batches pile
    up on the device."""
    gpu_free_at = [0.0]
    unfinished_at_start = []
    events = []

    def encode(images, ids):
        now = time.perf_counter()
        unfinished_at_start.append(sum(not e.query() for e in events))
        start = max(now, gpu_free_at[0])
        gpu_free_at[0] = start + 0.03
        event = _Done(gpu_free_at[0] - now)
        events.append(event)
        return [_Embedding(event) for _ in ids]

    asyncio.run(serve_batch_run(encode, list(range(64)), 32, 8, 0.01, key=str, real_serve=False, mode=mode))
    if mode == "pipelined":
        assert max(unfinished_at_start) == ENCODER_CONCURRENT_BATCHES - 1
    else:
        assert max(unfinished_at_start) >= 2


@pytest.mark.parametrize("mode", ["pipelined", "enqueue"])
def test_enqueue_requests_wait_for_the_queued_work_and_pipelined_ones_for_their_batch(mode):
    """The simulated asynchronous device of bench/bench_serve_batch_standin.py: an "enqueue" request
    awaits all the work queued so far (the hook), a "pipelined" one only its own batch (in the handler)."""
    from bench.bench_serve_batch_standin import AsyncDevice

    device = AsyncDevice(call_ms=1.0, image_ms=2.0, host_ms=0.1)
    hooks = []

    async def queued_work_done():
        queued_until = device.free_at
        hooks.append(queued_until)
        await device.queued_work_done()
        assert time.perf_counter() >= queued_until

    out = asyncio.run(serve_batch_run(device.encode, list(range(24)), 8, 4, 0.01, key=str, real_serve=False,
                                      mode=mode, queued_work_done=queued_work_done))
    assert len(hooks) == (4 + 24 if mode == "enqueue" else 0)  # warm-up and run, every request once
    assert out["mean_batch"] >= 3
