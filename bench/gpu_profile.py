"""Where a GPU call's time goes: CUDA kernel time under torch.profiler, grouped by kind of kernel.

Used by the GPU benchmarks to check which attention kernel a compiled graph really calls and what
share matrix multiplies, attention and the rest take, and where the GPU sits idle between them (what the
host was doing then: a synchronising copy, a host-side copy, launches). Groups are read from kernel names (cuDNN,
FlashAttention, CUTLASS/cuBLAS GEMMs, Triton kernels that inductor generated), so "other" holds
whatever matches none of them.
"""
from __future__ import annotations

import re
from collections import defaultdict

GROUPS = (
    ("attention_cudnn", re.compile(r"cudnn.*(attn|sdpa|fmha|flash)|(attn|sdpa|fmha).*cudnn", re.I)),
    ("attention_flash", re.compile(r"flash", re.I)),
    ("attention_other", re.compile(r"fmha|attention|attn|efficient", re.I)),
    ("gemm", re.compile(r"gemm|cutlass|sm90_xmma|nvjet|cublas|matmul|_mm_", re.I)),
    ("triton", re.compile(r"^triton", re.I)),
    ("conv", re.compile(r"conv|implicit_", re.I)),
)


def group_of(name: str) -> str:
    for group, pattern in GROUPS:
        if pattern.search(name):
            return group
    return "other"


def kernel_profile(fn, sync, runs: int = 5, top: int = 12) -> dict:
    """Run fn() `runs` times under the profiler (after one unprofiled call); → per-run milliseconds of
    CUDA kernel time by group, the top kernels, and the wall time per run."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        for _ in range(runs):
            fn()
        sync()
        wall = (time.perf_counter() - t) / runs
    per_kernel: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.name] += event.device_time / 1000.0  # µs → ms
    groups: dict[str, float] = defaultdict(float)
    for name, t_ms in per_kernel.items():
        groups[group_of(name)] += t_ms
    total = sum(groups.values())
    try:
        gaps = idle_gaps(prof.events(), runs)
    except Exception as exc:  # noqa: BLE001 - the kernel figures stand without the gaps
        gaps = {"idle_gaps_error": f"{type(exc).__name__}: {exc}"[:200]}
    return {
        **gaps,
        "wall_ms_per_run": round(1000 * wall, 2),
        "kernel_ms_per_run": round(total / runs, 2),
        "groups_ms_per_run": {g: round(v / runs, 2) for g, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": n[:120], "group": group_of(n), "ms_per_run": round(v / runs, 3)}
                        for n, v in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:top]],
    }


def idle_gaps(events, runs: int, top: int = 6, min_us: float = 20.0) -> dict:
    """The GPU's idle time inside the profiled window, per run: the gaps between its activities (kernels,
    copies) of `min_us` or more, apart from the many small ones between back-to-back launches; and the
    longest gaps with the innermost host operations running at their middle. Timestamps are the
    profiler's (the GPU's aligned to the host clock), in µs."""
    import torch

    device = [(e.time_range.start, e.time_range.end) for e in events
              if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start]
    if not device:
        return {}
    device.sort()
    gaps, small, end = [], 0.0, device[0][1]
    for start, stop in device[1:]:
        if start - end >= min_us:
            gaps.append((start - end, end, start))
        elif start > end:
            small += start - end  # between back-to-back launches (inside a CUDA graph too)
        end = max(end, stop)
    host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]

    def doing(at: float) -> list[str]:
        around = sorted((e for e in host if e.time_range.start <= at <= e.time_range.end),
                        key=lambda e: e.time_range.end - e.time_range.start)
        return [e.name[:60] for e in around[:3]]

    gaps.sort(reverse=True)
    return {
        "gpu_idle_ms_per_run": round(sum(g[0] for g in gaps) / 1000.0 / runs, 3),  # gaps of min_us or more
        "gpu_small_gaps_ms_per_run": round(small / 1000.0 / runs, 3),
        "idle_gaps": [{"us": round(g), "host_doing": doing((a + b) / 2)} for g, a, b in gaps[:top]],
    }
