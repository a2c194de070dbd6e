"""Timing helpers shared by the GPU benchmarks: a device sync, repeated timings with warm-up, p50/p90 in
milliseconds, a call's peak CUDA memory, and an asyncio wait for the GPU work queued so far."""
from __future__ import annotations

import asyncio
import statistics
import time

import numpy as np
import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup=3, iters=20):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def ms(times):
    return {"p50_ms": round(1000 * statistics.median(times), 2), "p90_ms": round(1000 * float(np.quantile(times, 0.9)), 2)}


def peak_mb(device, fn):
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**20)


async def gpu_work_done(poll_s: float) -> None:
    """Return once the GPU has finished the work queued so far (at once without CUDA), polling an event
    every `poll_s` instead of blocking the event loop or a worker thread: CUDA runs asynchronously, so a
    request's result only exists when its kernels have run."""
    if torch.cuda.is_available():
        done = torch.cuda.Event()
        done.record()
        while not done.query():
            await asyncio.sleep(poll_s)
