"""A SAM 3 replica's start (the Sam3Segmenter constructor: compile and warm up every bucket) twice in a row,
each in a fresh process sharing one inductor cache folder (TORCHINDUCTOR_CACHE_DIR), per compile variant:
the first start is a cold one (empty folder), the second what a replica restarted where the previous one
compiled (same node, or a cache folder on a shared volume) saves, and which of inductor's caches it hits.
Variants: `plain`, `frozen` (`compile_freezing`), `frozen_dynamic` (and `dynamic`): with
`compile_dynamic_batch`, one graph for every bucket above 1 instead of one per bucket; each start reports
the graphs dynamo compiled.

Inductor skips its FX-graph cache for graphs with frozen parameters ("fxgraph_cache_bypass"); the
kernels it generated (C++ on the CPU, Triton on CUDA) are still cached, so a frozen restart saves less.

    python -m bench.bench_sam3_compile_cache --json-out bench/results/sam3_compile_cache_cpu.json   # tiny, CPU
    python -m bench.bench_sam3_compile_cache --variants plain,dynamic,frozen,frozen_dynamic --max-batch 16 \
        --json-out bench/results/sam3_compile_dynamic_cpu.json                    # buckets 1..16, tiny, CPU
    python -m bench.bench_sam3_compile_cache --full --device cuda --max-batch 16                   # GPU
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


VARIANTS = ("plain", "frozen", "dynamic", "frozen_dynamic")


def start(args, checkpoint: str, cache_dir: str, variant: str) -> dict:
    """One replica start in a new process → its constructor seconds, the graphs dynamo compiled and
    inductor's cache counters."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir}
    cmd = [sys.executable, "-m", "bench.bench_sam3_compile_cache", "--child", checkpoint, "--device", args.device,
           "--max-batch", str(args.max_batch)] + (["--frozen"] if "frozen" in variant else []) \
        + (["--dynamic"] if "dynamic" in variant else []) + (["--full"] if args.full else [])
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(args) -> None:
    import time

    from deployments.segmenter.sam3.backend import Sam3Segmenter
    from sam3d_common.settings import Sam3Settings

    settings = Sam3Settings(local_dir=args.child if args.child != "-" else None, device=args.device,
                            compile="on", compile_freezing=args.frozen,
                            compile_dynamic_batch=args.dynamic, embedding_cache_mb=0)
    models = None
    if args.full:  # the full-size model at random init (no weights here), seeded: the same weights each start
        from transformers import Sam3VideoConfig

        from tests.support.sam3_testing import random_init_models

        dtype = "bfloat16" if args.device == "cuda" else "float32"
        models = random_init_models(Sam3VideoConfig(), device=args.device, dtype=dtype, seed=0)
    t = time.perf_counter()
    Sam3Segmenter(settings, models=models, max_batch_size=args.max_batch)
    from torch._dynamo.utils import counters

    cache = {k: v for k, v in counters["inductor"].items() if "cache" in k}
    print(json.dumps({"constructor_s": round(time.perf_counter() - t, 2), "graphs": counters["stats"]["unique_graphs"],
                      "inductor_cache": cache}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-batch", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="the full-size model at random init (default: tiny)")
    ap.add_argument("--variants", default="plain,frozen", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--json-out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--frozen", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dynamic", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS):
        ap.error(f"--variants: {sorted(set(variants) - set(VARIANTS))} not in {VARIANTS}")
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = "-"
        if not args.full:
            from tests.support.sam3_testing import write_tiny_checkpoint

            checkpoint = str(write_tiny_checkpoint(Path(tmp) / "ckpt"))
        report = {"device": args.device, "full": args.full, "max_batch": args.max_batch}
        for key in variants:
            cache_dir = str(Path(tmp) / f"inductor_{key}")
            first, again = (start(args, checkpoint, cache_dir, key) for _ in range(2))
            report[key] = {"first": first, "again": again,
                           "ratio": round(first["constructor_s"] / again["constructor_s"], 2)}
            print(key, json.dumps(report[key]), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
