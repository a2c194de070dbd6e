"""The click decoder's features from the ViT output: the tracker neck called whole (four FPN levels and a
sine position encoding per level, which transformers caches after the first call; as the encoder did
before, bench/sam3_encoder_before.py) against `tracker_features`, which builds only the three levels the
click decoder reads, and against those three levels folded (`folding.ClickNeck`, encoder_folding: fewer
FLOPs, channels-last). Full-size tracker at random init (Sam3VideoConfig defaults: ViT output 1024 x 72 x 72);
bf16 on CUDA, float32 on the CPU. The three run interleaved in one process, with the
ops (CPU) or kernels (CUDA) each launches per call counted by torch.profiler, and their outputs compared.

    python -m bench.bench_sam3_neck --json-out bench/results/sam3_neck_cpu.json        # CPU
    python -m bench.bench_sam3_neck --cuda --json-out bench/results/sam3_neck_h100.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.gpu_timing import sync
from bench.sam3_encoder_before import whole_neck_features
from deployments.segmenter.sam3.encoder import tracker_features
from deployments.segmenter.sam3.folding import ClickNeck


def launches(fn, device) -> int:
    """ATen ops (CPU) or CUDA kernels one call of fn launches."""
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        fn()
        sync(device)
    events = prof.events()
    if device.type == "cuda":
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in events if e.name.startswith("aten::") and e.cpu_parent is None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    from transformers import Sam3TrackerModel, Sam3VideoConfig

    from deployments.segmenter.sam3.loading import tracker_config_from

    device = torch.device("cuda" if args.cuda else "cpu")
    dtype = torch.bfloat16 if args.cuda else torch.float32
    torch.manual_seed(0)
    config = tracker_config_from(Sam3VideoConfig())
    t = time.perf_counter()
    with torch.device(device):
        tracker = Sam3TrackerModel(config).to(dtype).eval()
    build_s = time.perf_counter() - t
    models = SimpleNamespace(tracker=tracker)
    hidden = config.vision_config.backbone_config.hidden_size
    grid = config.vision_config.backbone_config.image_size // config.vision_config.backbone_config.patch_size
    # The ViT's output as encode_core has it: token-major (a channels-last view) and an NCHW copy.
    tokens = torch.randn(args.batch, grid, grid, hidden, device=device, dtype=dtype).permute(0, 3, 1, 2)
    spatial = tokens.contiguous()
    folded = ClickNeck(tracker, dtype)
    paths = {"whole_neck": lambda: whole_neck_features(models, spatial),
             "three_levels": lambda: tracker_features(models, spatial), "folded": lambda: folded(tokens)}
    report: dict = {"env": {"python": platform.python_version(), "torch": torch.__version__,
                            "device": torch.cuda.get_device_name() if args.cuda else platform.processor() or "cpu",
                            "dtype": str(dtype), "batch": args.batch, "vit_output": [hidden, grid, grid],
                            "build_s": round(build_s, 1)}}
    with torch.inference_mode():
        a, b, c = paths["whole_neck"](), paths["three_levels"](), paths["folded"]()
        report["max_abs_difference"] = max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))
        # Folding changes the order of the sums (and, in bf16, where rounding happens): relative error per output.
        report["folded_rel_error"] = [round(float((z.float() - y.float()).norm() / y.float().norm()), 6)
                                      for y, z in zip(b, c)]
        for fn in paths.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.iters):  # interleaved: drift hits all alike
            for name, fn in paths.items():
                sync(device)
                t = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - t)
        for name, fn in paths.items():
            report[name] = {"p50_ms": round(1000 * statistics.median(times[name]), 3),
                            "launches_per_call": launches(fn, device)}
    report["ratio_p50"] = round(report["whole_neck"]["p50_ms"] / report["three_levels"]["p50_ms"], 3)
    report["folded_ratio_p50"] = round(report["three_levels"]["p50_ms"] / report["folded"]["p50_ms"], 3)
    print(json.dumps(report, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
