"""@serve.batch on the CPU with simulated encoders, same requests, same concurrency, same max batch and
wait: images/s, mean batch and latency of each.

1. The asyncio stand-in (bench/serve_batch_standin.py, what the GPU benchmarks use where Ray is not
   installed) against the real decorator, with an encoder that holds one device while it runs (a lock; a
   fixed cost per call plus a cost per image).
2. With --modes: the real decorator in each of the batch handler's modes ("pipelined", the Segmenter's:
   two batches at once, each until its work is done; "enqueue", before: one at a time, done once queued),
   with an encoder that behaves like the CUDA-graph encoder: the calling thread spends host_ms per image
   (filling the upload buffer), then queues the batch on a simulated device and returns at once; the
   device runs batches one after another in the order queued (call_ms + image_ms per image), and the
   result is ready when its batch has run. Under "enqueue" a request then waits for all the device work
   queued so far, as a CUDA event recorded on the stream does. A model of the GPU, not a GPU: its figures
   say how the two handlers form batches, not what a GPU does.

    python -m bench.bench_serve_batch_standin --modes --json-out bench/results/serve_batch_standin_modes_cpu.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path

from bench.serve_batch_standin import SERVE_MODES, serve_batch_run, stub_ray_serve_if_missing


def gpu_like(call_ms: float, image_ms: float):
    """encode(images, ids) that holds one device: call_ms + image_ms per image, one call at a time."""
    device = threading.Lock()

    def encode(images, ids):
        with device:
            time.sleep((call_ms + image_ms * len(images)) / 1000)
        return list(ids)
    return encode


class AsyncDevice:
    """A device that runs queued batches in order while the host goes on (see the module docstring)."""

    class Done:
        def __init__(self, at: float):
            self.at = at

        def query(self) -> bool:
            return time.perf_counter() >= self.at

    class Result:
        def __init__(self, key, ready):
            self.key, self.ready = key, ready

    def __init__(self, call_ms: float, image_ms: float, host_ms: float):
        self.call_s, self.image_s, self.host_s = call_ms / 1000, image_ms / 1000, host_ms / 1000
        self.free_at = 0.0
        self.lock = threading.Lock()

    def encode(self, images, ids):
        time.sleep(self.host_s * len(images))  # the host's part: the upload buffer filled
        with self.lock:
            start = max(time.perf_counter(), self.free_at)
            self.free_at = start + self.call_s + self.image_s * len(images)
            ready = self.Done(self.free_at)
        return [self.Result(i, ready) for i in ids]

    async def queued_work_done(self) -> None:
        """Everything queued so far has run (a CUDA event recorded on the stream now)."""
        until = self.free_at
        while time.perf_counter() < until:
            await asyncio.sleep(0.0005)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--concurrency", default="4,32")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--wait-s", type=float, default=0.01)
    ap.add_argument("--call-ms", type=float, default=4.0)
    ap.add_argument("--image-ms", type=float, default=11.0)  # about an H100's ViT time per image in a batch
    ap.add_argument("--modes", action="store_true", help="also part 2: the handler's modes, asynchronous device")
    ap.add_argument("--async-call-ms", type=float, default=1.0)  # static FP8, H100 run 13: 11.86 ms at batch 1,
    ap.add_argument("--async-image-ms", type=float, default=10.8)  # 87.3 ms at batch 8
    ap.add_argument("--host-ms", type=float, default=0.5, help="host time per image before the batch is queued")
    ap.add_argument("--key-ms", type=float, default=3.3, help="each request's content hash, in a worker thread "
                    "(blake2b over a 1008² image on one core); part 2 only")
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
            out.update(concurrency=concurrency, encoder="one call at a time")
            report["runs"].append(out)
            print(json.dumps(out), flush=True)
        for mode in SERVE_MODES if args.modes else ():
            device = AsyncDevice(args.async_call_ms, args.async_image_ms, args.host_ms)
            out = asyncio.run(serve_batch_run(device.encode, images, concurrency, args.max_batch, args.wait_s,
                                              key=lambda im: time.sleep(args.key_ms / 1000) or str(im),
                                              real_serve=True, mode=mode,
                                              queued_work_done=device.queued_work_done))
            out.update(concurrency=concurrency, encoder="asynchronous device")
            report["runs"].append(out)
            print(json.dumps(out), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
