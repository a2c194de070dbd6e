"""bench/gpu_profile.py's reading of a profile: kernel groups by name, and the GPU's idle gaps with what the
host was doing in them, on hand-made profiler events (the real ones need a GPU)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from bench.gpu_profile import group_of, idle_gaps  # noqa: E402

GPU, CPU = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU


def event(name, device, start, end):
    return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end))


def test_kernel_groups():
    assert group_of("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention_cudnn"
    assert group_of("nvjet_sm90_qqtst_128x160") == "gemm"
    assert group_of("triton_per_fused_add_native_layer_norm") == "triton"
    assert group_of("void implicit_convolve_sgemm<bf16>") == "gemm"


def test_idle_gaps_name_the_host_work_inside_them():
    events = [
        event("kernel_a", GPU, 0, 100), event("kernel_b", GPU, 90, 200),  # overlapping: no gap
        event("kernel_c", GPU, 500, 600),  # 300 µs idle after b
        event("kernel_d", GPU, 610, 700),  # 10 µs: below the threshold
        event("kernel_e", GPU, 900, 1000),  # 200 µs idle after d
        event("encode_batch", CPU, 0, 1000), event("cudaStreamSynchronize", CPU, 250, 450),
        event("numpy copy", CPU, 750, 850),
    ]
    out = idle_gaps(events, runs=2)
    assert out["gpu_idle_ms_per_run"] == 0.25  # (300 + 200) µs over two runs
    assert out["gpu_small_gaps_ms_per_run"] == 0.005  # d's 10 µs
    assert [g["us"] for g in out["idle_gaps"]] == [300, 200]
    assert out["idle_gaps"][0]["host_doing"] == ["cudaStreamSynchronize", "encode_batch"]
    assert out["idle_gaps"][1]["host_doing"] == ["numpy copy", "encode_batch"]
    assert idle_gaps([event("x", CPU, 0, 1)], runs=1) == {}
