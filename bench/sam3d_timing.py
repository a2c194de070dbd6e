"""Step timers of bench_sam3d_h200.py: each wrapped call's duration by name, without adding a
wait on the GPU, and the device's peak memory. bench/gpu_timing.py serves the other GPU
benches (repeated calls, synchronised around each); these time calls made once inside a run."""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch


class StepTimers:
    """Durations per name for the run in progress (`clear()` between runs); `cuda` off: wall
    time on the host, and no peak memory."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.times: dict[str, list[float]] = defaultdict(list)
        self.spans: list = []  # (name, start event, end event) on CUDA, read into times by collect_spans()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def peak_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def clear(self) -> None:
        self.times.clear()
        self.spans.clear()

    def timed(self, name: str, fn):
        """Wraps fn and records its duration without adding a wait: on CUDA, the GPU time from the
        call's start to the end of the work it queued (events on the calling thread's stream, read
        after the run, including any GPU idle inside the call); on the CPU, its wall time. Runs
        2-16 synchronised the GPU around each call instead, which itself idled the GPU between a
        step and the launch of the next, and so inflated every image → GLB figure."""
        def wrapper(*a, **k):
            if not self.cuda:
                t = time.perf_counter()
                out = fn(*a, **k)
                self.times[name].append(time.perf_counter() - t)
                return out
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*a, **k)
            end.record()
            self.spans.append((name, start, end))
            return out
        return wrapper

    def collect_spans(self) -> None:
        self.sync()
        for name, start, end in self.spans:
            self.times[name].append(start.elapsed_time(end) / 1000)
        self.spans.clear()

    def ms(self, name: str) -> dict | None:
        v = np.array(self.times.get(name, [])) * 1000
        return None if not len(v) else {"n": len(v), "mean": round(float(v.mean()), 1),
                                         "median": round(float(np.median(v)), 1)}
