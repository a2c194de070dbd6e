"""The asyncio stand-in for @serve.batch (bench/serve_batch_standin.py, what the GPU benchmarks use where
Ray is not installed) against the real decorator, side by side on the CPU with an encoder that behaves like
a GPU: one call at a time (a lock), a fixed cost per call plus a cost per image. Same requests, same
concurrency, same max batch and wait: images/s and the mean batch of each.

    python -m bench.bench_serve_batch_standin --json-out bench/results/serve_batch_standin_cpu.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path

from bench.serve_batch_standin import serve_batch_run, stub_ray_serve_if_missing


def gpu_like(call_ms: float, image_ms: float):
    """encode(images, ids) that holds one device: call_ms + image_ms per image, one call at a time."""
    device = threading.Lock()

    def encode(images, ids):
        with device:
            time.sleep((call_ms + image_ms * len(images)) / 1000)
        return list(ids)
    return encode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--concurrency", default="4,32")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--wait-s", type=float, default=0.01)
    ap.add_argument("--call-ms", type=float, default=4.0)
    ap.add_argument("--image-ms", type=float, default=11.0)  # about an H100's ViT time per image in a batch
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if not stub_ray_serve_if_missing():
        raise SystemExit("Ray Serve is not installed: nothing to compare the stand-in with")
    images = list(range(args.requests))
    report: dict = {"args": vars(args), "runs": []}
    for concurrency in [int(c) for c in args.concurrency.split(",")]:
        for real in (True, False):
            out = asyncio.run(serve_batch_run(gpu_like(args.call_ms, args.image_ms), images, concurrency,
                                              args.max_batch, args.wait_s, key=str, real_serve=real))
            out.update(concurrency=concurrency)
            report["runs"].append(out)
            print(json.dumps(out), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
